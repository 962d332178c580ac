// ClipTokenizer: golden parity with transformers 4.33 CLIPTokenizer (slow, ftfy path) plus edge cases.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/core.h"
#include "models/clip_tokenizer.h"
#include "models/ftfy.h"
#include "models/unicode_text.h"
#include "parity/parity.h"
#include "test_util.h"

namespace collage {
namespace {

const std::string& folder() {
  static const std::string f = test::golden("tokenizer");
  return f;
}
const ClipTokenizer& sd1() {
  static const ClipTokenizer t = ClipTokenizer::from_folder(folder());
  return t;
}
const ClipTokenizer& sd2() {
  static const ClipTokenizer t = ClipTokenizer::from_folder(folder(), folder() + "/sd2");
  return t;
}

std::string fix(const std::string& s) { return unicode::to_utf8(ftfy::fix_text(unicode::from_utf8(s))); }

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

TEST(ClipTokenizer, GoldenCases) {
  parity::Recorder rec("tokenizer");
  parity::check_tokenizer(folder(), rec);
  const auto& results = rec.results();
  const Json cases = read_json_file(folder() + "/cases.json");
  // tokens, tokens_sd2, ids_untruncated, ids_sd1, ids_sd2 per case, plus header ids.
  EXPECT_GE(results.size(), cases["cases"].size() * 5);
  size_t failed = 0;
  for (const auto& r : results)
    if (!r.pass) {
      ++failed;
      std::cout << "FAIL " << r.name << ": " << r.detail << "\n";
    }
  EXPECT_EQ(failed, 0u) << "of " << results.size() << " tokenizer checks";
}

TEST(ClipTokenizer, CheckerReportsFirstDifference) {
  // A copy of the folder whose case 1 has one altered id must fail exactly there, naming the position.
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir("clip_tok_checker");
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"})
    fs::copy_file(folder() + "/" + f, dir + "/" + f);
  fs::copy(folder() + "/sd2", dir + "/sd2", fs::copy_options::recursive);
  Json cases = read_json_file(folder() + "/cases.json");
  cases["cases"][1]["ids_sd1"][3] = 7;
  write_json_file(dir + "/cases.json", cases);
  parity::Recorder rec("tokenizer");
  parity::check_tokenizer(dir, rec);
  std::vector<std::string> failed;
  for (const auto& r : rec.results())
    if (!r.pass) {
      failed.push_back(r.name);
      EXPECT_NE(r.detail.find("position 3"), std::string::npos) << r.detail;
      EXPECT_NE(r.detail.find("reference 7"), std::string::npos) << r.detail;
    }
  EXPECT_EQ(failed, (std::vector<std::string>{"case01.ids_sd1"}));
}

TEST(ClipTokenizer, SpecialIdsAndLengths) {
  EXPECT_EQ(sd1().bos_id(), 49406);
  EXPECT_EQ(sd1().eos_id(), 49407);
  EXPECT_EQ(sd1().pad_id(), 49407);
  EXPECT_EQ(sd2().pad_id(), 0);
  EXPECT_EQ(sd2().pad_token(), "!");
  EXPECT_EQ(sd1().model_max_length(), 77);
  EXPECT_EQ(sd1().vocab_size(), 49408);
}

TEST(ClipTokenizer, EmptyString) {
  EXPECT_TRUE(sd1().tokenize("").empty());
  EXPECT_TRUE(sd1().tokenize(" \t\n ").empty());
  EXPECT_EQ(sd1().encode(""), (std::vector<int64_t>{49406, 49407}));
  const auto padded = sd1().encode_padded("");
  ASSERT_EQ(padded.size(), 77u);
  EXPECT_EQ(padded[0], 49406);
  for (size_t i = 1; i < padded.size(); ++i) EXPECT_EQ(padded[i], 49407);
  const auto padded2 = sd2().encode_padded("");
  EXPECT_EQ(padded2[1], 49407);
  EXPECT_EQ(padded2[2], 0);
}

TEST(ClipTokenizer, TruncationKeepsEosLast) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "cat ";
  const auto full = sd1().encode(text);
  ASSERT_EQ(full.size(), 102u);
  for (const auto* tok : {&sd1(), &sd2()}) {
    const auto ids = tok->encode_padded(text, 77);
    ASSERT_EQ(ids.size(), 77u);
    EXPECT_EQ(ids.front(), 49406);
    EXPECT_EQ(ids.back(), 49407);
    EXPECT_TRUE(std::equal(ids.begin() + 1, ids.begin() + 76, full.begin() + 1));
  }
  // A shorter max_length truncates the same way.
  const auto short_ids = sd1().encode_padded(text, 5);
  EXPECT_EQ(short_ids, (std::vector<int64_t>{49406, full[1], full[2], full[3], 49407}));
  EXPECT_THROW(sd1().encode_padded(text, 1), Error);
}

TEST(ClipTokenizer, Sd2ExclamationQuirk) {
  EXPECT_EQ(sd1().tokenize("wow!!"), (std::vector<std::string>{"wow</w>", "!!</w>"}));
  EXPECT_EQ(sd2().tokenize("wow!!"), (std::vector<std::string>{"wow</w>", "!", "!"}));
  const auto ids = sd2().encode("wow!!");
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(ids[2], 0);
  EXPECT_EQ(ids[3], 0);
  EXPECT_NE(sd1().encode("wow!!")[2], 0);
  // The word before '!' ends a word ("</w>") in SD2 only.
  EXPECT_EQ(sd2().tokenize("hello!world")[0], "hello</w>");
}

TEST(ClipTokenizer, LiteralSpecialTokens) {
  const auto ids = sd1().encode("a<|endoftext|>b");
  EXPECT_EQ(ids, (std::vector<int64_t>{49406, *sd1().token_to_id("a</w>"), 49407, *sd1().token_to_id("b</w>"),
                                       49407}));
  EXPECT_EQ(sd1().tokenize("x <|startoftext|> y"),
            (std::vector<std::string>{"x</w>", "<|startoftext|>", "y</w>"}));
  // Upper case is not split out of the raw text but still matches CLIP's (case-insensitive) pattern.
  EXPECT_EQ(sd1().tokenize("<|ENDOFTEXT|>"), (std::vector<std::string>{"<|endoftext|>"}));
  // An escaped form becomes the special token after HTML unescaping.
  EXPECT_EQ(sd1().encode("&lt;|endoftext|&gt;")[1], 49407);
}

TEST(ClipTokenizer, AddedTokens) {
  ClipTokenizer tok = sd1();  // a copy: the shared instance stays unmodified
  const int64_t id0 = tok.add_token("<layer_0>");
  EXPECT_EQ(id0, 49408);
  EXPECT_EQ(tok.vocab_size(), 49409);
  EXPECT_EQ(tok.add_token("<layer_0>"), id0);  // idempotent
  const int64_t id1 = tok.add_token("<layer_1>");
  EXPECT_EQ(id1, 49409);
  EXPECT_EQ(tok.token_to_id("<layer_1>"), id1);
  EXPECT_EQ(tok.id_to_token(id0), "<layer_0>");
  EXPECT_THROW(tok.add_token("cat</w>"), Error);

  EXPECT_EQ(tok.tokenize("a photo of <layer_0>, <layer_1>"),
            (std::vector<std::string>{"a</w>", "photo</w>", "of</w>", "<layer_0>", ",</w>", "<layer_1>"}));
  // Split out before cleaning and BPE, even inside a word; the word before it ends there.
  EXPECT_EQ(tok.tokenize("cat<layer_0>dog"), (std::vector<std::string>{"cat</w>", "<layer_0>", "dog</w>"}));
  const auto ids = tok.encode_padded("a <layer_1> in the style of <layer_0>");
  EXPECT_EQ(ids[2], id1);
  EXPECT_EQ(ids[7], id0);
  EXPECT_EQ(ids[8], 49407);
  // The original tokenizer does not know the token.
  EXPECT_FALSE(sd1().token_to_id("<layer_0>").has_value());
  EXPECT_EQ(sd1().vocab_size(), 49408);
  EXPECT_NE(tok.decode(ids).find("<layer_1>"), std::string::npos);
}

TEST(ClipTokenizer, Decode) {
  EXPECT_EQ(sd1().decode(sd1().encode("A Photo of a café, 4k")), "<|startoftext|>a photo of a café , 4 k <|endoftext|>");
}

TEST(ClipTokenizer, MissingVocabNamesThePath) {
  const std::string dir = test::temp_dir("clip_tok_missing");
  try {
    ClipTokenizer::from_folder(dir);
    FAIL() << "expected collage::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.file(), (std::filesystem::path(dir) / "vocab.json").string());
    EXPECT_NE(std::string(e.what()).find("vocab.json"), std::string::npos);
  }
  // With the vocabulary but no merges file, the error names merges.txt.
  std::filesystem::copy_file(folder() + "/vocab.json", dir + "/vocab.json");
  try {
    ClipTokenizer::from_folder(dir);
    FAIL() << "expected collage::Error";
  } catch (const Error& e) {
    EXPECT_NE(e.file().find("merges.txt"), std::string::npos);
  }
}

TEST(ClipTokenizer, PadTokenStringAndAddedTokenForms) {
  const std::string dir = test::temp_dir("clip_tok_pad");
  write_file(dir + "/special_tokens_map.json",
             R"({"pad_token": {"content": "!", "lstrip": false, "normalized": true, "rstrip": false,
                 "single_word": false}})");
  const ClipTokenizer dict_form = ClipTokenizer::from_folder(folder(), dir);
  EXPECT_EQ(dict_form.pad_id(), 0);
  EXPECT_EQ(dict_form.tokenize("hi!"), (std::vector<std::string>{"hi</w>", "!"}));
  // special_tokens_map.json overrides tokenizer_config.json, as in from_pretrained.
  write_file(dir + "/tokenizer_config.json", R"({"pad_token": "!", "model_max_length": 64})");
  write_file(dir + "/special_tokens_map.json", R"({"pad_token": "<|endoftext|>"})");
  const ClipTokenizer overridden = ClipTokenizer::from_folder(folder(), dir);
  EXPECT_EQ(overridden.pad_id(), 49407);
  EXPECT_EQ(overridden.model_max_length(), 64);
  write_file(dir + "/special_tokens_map.json", R"({"pad_token": 5})");
  EXPECT_THROW(ClipTokenizer::from_folder(folder(), dir), Error);
}

TEST(ClipTokenizer, TextCleaning) {
  // HTML entities, unless the line contains a literal '<'.
  EXPECT_EQ(fix("fish &amp; chips &#x41;&#66; &EACUTE;"), "fish & chips AB \u00c9");
  EXPECT_EQ(fix("<b>fish &amp; chips</b>"), "<b>fish &amp; chips</b>");
  EXPECT_EQ(fix("&#59; &#12ab; &nosuchentity;"), "&#59; &#12ab; &nosuchentity;");
  // Mojibake (UTF-8 read as Windows-1252 / Latin-1) is repaired.
  EXPECT_EQ(fix("caf\u00c3\u00a9 cr\u00c3\u00a8me"), "caf\u00e9 cr\u00e8me");
  EXPECT_EQ(fix("\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d"), "\"quoted\"");
  EXPECT_TRUE(ftfy::is_bad(unicode::from_utf8("caf\u00c3\u00a9")));
  EXPECT_FALSE(ftfy::is_bad(unicode::from_utf8("caf\u00e9 na\u00efve \u00c5ngstr\u00f6m")));
  // Width, ligatures, quotes, line breaks, control characters, NFC.
  EXPECT_EQ(fix("\uff21\uff22\u3000\ufb01ne \u2018a\u2019 \u201cb\u201d"), "AB fine 'a' \"b\"");
  EXPECT_EQ(fix("a\r\nb\rc\u2028d"), "a\nb\nc\nd");
  EXPECT_EQ(fix("a\x01\x7f\ufeffb\x1b[31mc"), "abc");
  EXPECT_EQ(fix("a\u0301"), "\u00e1");
  EXPECT_EQ(fix("\u0080"), "\u20ac");  // C1 control read as Windows-1252
}

TEST(ClipTokenizer, PreTokenizerEdgeCases) {
  // Contractions only at the start of a match; digits are single tokens; punctuation runs stay together.
  EXPECT_EQ(sd1().tokenize("'stop' 12"), (std::vector<std::string>{"'s</w>", "top</w>", "'</w>", "1</w>", "2</w>"}));
  // Final sigma and the dotted capital I follow Python's str.lower().
  EXPECT_EQ(sd1().tokenize("\u039f\u0394\u039f\u03a3"), sd1().tokenize("\u03bf\u03b4\u03bf\u03c2"));
  EXPECT_EQ(sd1().tokenize("\u0130"), sd1().tokenize("i\u0307"));
}

}  // namespace
}  // namespace collage
