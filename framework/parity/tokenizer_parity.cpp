// Parity of ClipTokenizer against a folder laid out like golden/tokenizer/: vocab.json, merges.txt, the SD1
// tokenizer configs, sd2/ configs (pad "!"), and cases.json with the reference tokens and ids.
#include <filesystem>

#include "core/core.h"
#include "models/models.h"
#include "parity/parity.h"

namespace collage::parity {
namespace {

// Exact comparison of two sequences; the detail names the first differing position and both values.
template <typename T>
void compare_sequences(Recorder& rec, const std::string& name, const std::vector<T>& got,
                       const std::vector<T>& ref) {
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i)
    if (!(got[i] == ref[i])) {
      rec.exact(name, false, fmt::format("first difference at position {}: got {} vs reference {}", i,
                                         Json(got[i]).dump(), Json(ref[i]).dump()));
      return;
    }
  if (got.size() != ref.size()) {
    const size_t i = std::min(got.size(), ref.size());
    rec.exact(name, false,
              fmt::format("length {} vs reference {}; first difference at position {}: got {} vs reference {}",
                          got.size(), ref.size(), i, i < got.size() ? Json(got[i]).dump() : "(end)",
                          i < ref.size() ? Json(ref[i]).dump() : "(end)"));
    return;
  }
  rec.exact(name, true, fmt::format("{} values", got.size()));
}

void check_header_id(Recorder& rec, const Json& cases, const char* key, int64_t got) {
  if (!cases.contains(key) || !cases[key].is_number_integer()) return;
  const int64_t ref = cases[key].get<int64_t>();
  rec.exact(std::string("header.") + key, got == ref, fmt::format("got {} vs reference {}", got, ref));
}

}  // namespace

void check_tokenizer(const std::string& folder, Recorder& rec) {
  namespace fs = std::filesystem;
  const std::string cases_path = (fs::path(folder) / "cases.json").string();
  const Json cases = read_json_file(cases_path);
  COLLAGE_CHECK_AT(cases.contains("cases") && cases["cases"].is_array(), cases_path, "cases",
                   "expected an array of tokenizer cases");

  const ClipTokenizer sd1 = ClipTokenizer::from_folder(folder);
  std::optional<ClipTokenizer> sd2;
  const std::string sd2_dir = (fs::path(folder) / "sd2").string();
  try {
    sd2 = ClipTokenizer::from_folder(folder, sd2_dir);
  } catch (const std::exception& e) {
    rec.failure("sd2.load", e.what());
  }

  check_header_id(rec, cases, "bos_token_id", sd1.bos_id());
  check_header_id(rec, cases, "eos_token_id", sd1.eos_id());
  check_header_id(rec, cases, "pad_token_id_sd1", sd1.pad_id());
  if (sd2) check_header_id(rec, cases, "pad_token_id_sd2", sd2->pad_id());

  for (size_t n = 0; n < cases["cases"].size(); ++n) {
    const Json& c = cases["cases"][n];
    const int64_t index = c.value("index", static_cast<int64_t>(n));
    const std::string prefix = fmt::format("case{:02d}.", index);
    try {
      const std::string text = c.at("text").get<std::string>();
      if (c.contains("tokens"))
        compare_sequences(rec, prefix + "tokens", sd1.tokenize(text), c["tokens"].get<std::vector<std::string>>());
      if (c.contains("ids_untruncated"))
        compare_sequences(rec, prefix + "ids_untruncated", sd1.encode(text),
                          c["ids_untruncated"].get<std::vector<int64_t>>());
      // The padded length comes from the data (cases.json max_length, else the reference row's length).
      if (c.contains("ids_sd1")) {
        const auto ref = c["ids_sd1"].get<std::vector<int64_t>>();
        const int64_t max_length = cases.value("max_length", static_cast<int64_t>(ref.size()));
        compare_sequences(rec, prefix + "ids_sd1", sd1.encode_padded(text, max_length), ref);
      }
      if (sd2 && c.contains("tokens_sd2"))
        compare_sequences(rec, prefix + "tokens_sd2", sd2->tokenize(text),
                          c["tokens_sd2"].get<std::vector<std::string>>());
      if (c.contains("ids_sd2")) {
        const auto ref = c["ids_sd2"].get<std::vector<int64_t>>();
        const int64_t max_length = cases.value("max_length", static_cast<int64_t>(ref.size()));
        if (sd2)
          compare_sequences(rec, prefix + "ids_sd2", sd2->encode_padded(text, max_length), ref);
        else
          rec.failure(prefix + "ids_sd2", "no SD2 tokenizer (see sd2.load)");
      }
    } catch (const std::exception& e) {
      rec.failure(prefix + "error", e.what());
    }
  }
}

}  // namespace collage::parity
