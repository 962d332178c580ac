#include "models/clip_tokenizer.h"

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>

#include "core/core.h"
#include "models/ftfy.h"
#include "models/unicode_text.h"

namespace collage {
namespace {

namespace fs = std::filesystem;

// transformers' CLIPTokenizer reads merges.txt lines [1 : 49152 - 256 - 2 + 1] (after the version line).
constexpr size_t kMaxMerges = 49152 - 256 - 2;

std::string read_text_file(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  COLLAGE_CHECK_AT(in.good(), path, "", "cannot open the tokenizer's {} (missing?)", what);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::vector<std::string> split_ascii_whitespace(const std::string& line) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_ascii_space(line[i])) ++i;
    size_t j = i;
    while (j < line.size() && !is_ascii_space(line[j])) ++j;
    if (j > i) parts.push_back(line.substr(i, j - i));
    i = j;
  }
  return parts;
}

// GPT-2's byte -> printable code point table: printable Latin-1 bytes map to themselves, the rest to
// U+0100 onwards in byte order.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = printable[b] ? static_cast<char32_t>(b) : next++;
  return table;
}

// Python's str.strip()/lstrip()/rstrip() (Unicode whitespace) on UTF-8 text.
std::string py_strip(const std::string& text, bool left, bool right) {
  std::u32string u = unicode::from_utf8(text);
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && unicode::is_py_space(u[b])) ++b;
  if (right)
    while (e > b && unicode::is_py_space(u[e - 1])) --e;
  return unicode::to_utf8(std::u32string_view(u).substr(b, e - b));
}

// CLIP's whitespace_clean: runs of \s (White_Space) -> one space, then strip.
std::u32string whitespace_clean(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  bool in_space = false;
  for (char32_t c : text) {
    if (unicode::is_white_space(c)) {
      if (!in_space) out.push_back(U' ');
      in_space = true;
    } else {
      out.push_back(c);
      in_space = false;
    }
  }
  size_t b = 0, e = out.size();
  while (b < e && unicode::is_py_space(out[b])) ++b;
  while (e > b && unicode::is_py_space(out[e - 1])) --e;
  return out.substr(b, e - b);
}

// A literal of CLIP's pattern at `pos`, compared case-insensitively (the pattern uses re.IGNORECASE).
bool literal_at(const std::u32string& text, size_t pos, std::u32string_view lit) {
  if (pos + lit.size() > text.size()) return false;
  for (size_t i = 0; i < lit.size(); ++i)
    if (unicode::simple_fold(text[pos + i]) != unicode::simple_fold(lit[i])) return false;
  return true;
}

// Under re.IGNORECASE the `regex` module treats U+0345 (combining ypogegrammeni, whose case variants are
// letters) as outside [^\s\p{L}\p{N}] while [\p{L}] still rejects it, so no alternative matches it.
bool is_punct_piece_char(char32_t c) {
  return !unicode::is_white_space(c) && !unicode::is_letter(c) && !unicode::is_number(c) && c != 0x345;
}

// findall of CLIP's pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// written out by hand: alternatives are tried in order at each position; unmatched characters are skipped.
std::vector<std::u32string> pre_tokenize(const std::u32string& text) {
  static const std::u32string_view kLiterals[] = {U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re",
                                                  U"'ve", U"'m", U"'ll", U"'d"};
  std::vector<std::u32string> pieces;
  size_t pos = 0;
  while (pos < text.size()) {
    bool matched = false;
    for (std::u32string_view lit : kLiterals)
      if (literal_at(text, pos, lit)) {
        pieces.push_back(text.substr(pos, lit.size()));
        pos += lit.size();
        matched = true;
        break;
      }
    if (matched) continue;
    const char32_t c = text[pos];
    size_t end = pos;
    if (unicode::is_letter(c)) {
      while (end < text.size() && unicode::is_letter(text[end])) ++end;
    } else if (unicode::is_number(c)) {
      end = pos + 1;
    } else if (is_punct_piece_char(c)) {
      while (end < text.size() && is_punct_piece_char(text[end])) ++end;
    } else {
      ++pos;  // whitespace (or U+0345): no alternative matches here
      continue;
    }
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

std::string join_pair(const std::string& a, const std::string& b) { return a + ' ' + b; }

}  // namespace

struct ClipTokenizer::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::string>> bpe;
};

ClipTokenizer::ClipTokenizer() : cache_(std::make_shared<Cache>()) {
  const auto table = bytes_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::append_utf8(s, table[b]);
    byte_encoder_[b] = s;
    byte_decoder_[s] = static_cast<unsigned char>(b);
  }
}

ClipTokenizer ClipTokenizer::from_folder(const std::string& dir, const std::string& config_dir_arg) {
  ClipTokenizer tok;
  const std::string config_dir = config_dir_arg.empty() ? dir : config_dir_arg;

  // vocab.json
  const std::string vocab_path = (fs::path(dir) / "vocab.json").string();
  COLLAGE_CHECK_AT(fs::exists(vocab_path), vocab_path, "", "tokenizer vocabulary file not found");
  const Json vocab = read_json_file(vocab_path);
  COLLAGE_CHECK_AT(vocab.is_object(), vocab_path, "", "expected a JSON object token -> id");
  tok.encoder_.reserve(vocab.size());
  tok.decoder_.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    COLLAGE_CHECK_AT(it->is_number_integer(), vocab_path, it.key(), "token id must be an integer");
    const int64_t id = it->get<int64_t>();
    tok.encoder_[it.key()] = id;
    tok.decoder_[id] = it.key();
  }

  // merges.txt: Python's read().strip().split("\n")[1:48895], each line split on whitespace.
  const std::string merges_path = (fs::path(dir) / "merges.txt").string();
  COLLAGE_CHECK_AT(fs::exists(merges_path), merges_path, "", "tokenizer merges file not found");
  std::string merges = read_text_file(merges_path, "merges file");
  {
    size_t b = 0, e = merges.size();
    while (b < e && is_ascii_space(merges[b])) ++b;
    while (e > b && is_ascii_space(merges[e - 1])) --e;
    merges = merges.substr(b, e - b);
  }
  std::vector<std::string> lines;
  for (size_t pos = 0; pos <= merges.size();) {
    size_t nl = merges.find('\n', pos);
    if (nl == std::string::npos) nl = merges.size();
    lines.push_back(merges.substr(pos, nl - pos));
    pos = nl + 1;
  }
  for (size_t i = 1; i < lines.size() && i <= kMaxMerges; ++i) {
    const auto parts = split_ascii_whitespace(lines[i]);
    if (parts.size() != 2) continue;  // such a tuple never equals a symbol pair
    tok.bpe_ranks_[join_pair(parts[0], parts[1])] = static_cast<int>(i - 1);  // a repeated pair keeps the last
  }

  // added_tokens.json (tokenizers saved after add_tokens): ids must continue the vocabulary.
  const std::string added_path = (fs::path(dir) / "added_tokens.json").string();
  if (fs::exists(added_path)) {
    const Json added = read_json_file(added_path);
    std::vector<std::pair<int64_t, std::string>> sorted;
    for (auto it = added.begin(); it != added.end(); ++it) sorted.emplace_back(it->get<int64_t>(), it.key());
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [id, token] : sorted) {
      COLLAGE_CHECK_AT(id == tok.vocab_size(), added_path, token,
                       "non-consecutive added token: should have id {} but has {}", tok.vocab_size(), id);
      tok.add_new_token(token);
    }
  }

  // Special tokens: CLIPTokenizer's defaults, then tokenizer_config.json, then special_tokens_map.json.
  tok.bos_token_ = {"<|startoftext|>", false, false, false, true};
  tok.eos_token_ = {"<|endoftext|>", false, false, false, true};
  tok.unk_token_ = {"<|endoftext|>", false, false, false, true};
  tok.pad_token_ = {"<|endoftext|>", false, false, false, false};
  std::vector<SpecialToken> additional;
  auto read_special = [](const Json& v, const std::string& file, const std::string& key) {
    SpecialToken t;
    if (v.is_string()) {
      t.content = v.get<std::string>();
    } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      t.content = v["content"].get<std::string>();
      t.lstrip = v.value("lstrip", false);
      t.rstrip = v.value("rstrip", false);
      t.single_word = v.value("single_word", false);
      t.is_added_token = true;
    } else {
      throw Error(fmt::format("expected a token string or an AddedToken object, got {}", v.dump()), file, key);
    }
    return t;
  };
  auto apply_config = [&](const std::string& path) {
    if (!fs::exists(path)) return;
    const Json cfg = read_json_file(path);
    COLLAGE_CHECK_AT(cfg.is_object(), path, "", "expected a JSON object");
    const std::pair<const char*, SpecialToken*> slots[] = {{"bos_token", &tok.bos_token_},
                                                           {"eos_token", &tok.eos_token_},
                                                           {"unk_token", &tok.unk_token_},
                                                           {"pad_token", &tok.pad_token_}};
    for (const auto& [key, slot] : slots)
      if (cfg.contains(key) && !cfg[key].is_null()) *slot = read_special(cfg[key], path, key);
    if (cfg.contains("additional_special_tokens") && cfg["additional_special_tokens"].is_array()) {
      additional.clear();
      for (const auto& v : cfg["additional_special_tokens"])
        additional.push_back(read_special(v, path, "additional_special_tokens"));
    }
    if (cfg.contains("model_max_length") && cfg["model_max_length"].is_number()) {
      // Unset lengths are stored as int(1e30); clamp to what an int64 holds.
      const double v = cfg["model_max_length"].get<double>();
      tok.model_max_length_ = v >= 9.2e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(v);
    }
  };
  apply_config((fs::path(config_dir) / "tokenizer_config.json").string());
  apply_config((fs::path(config_dir) / "special_tokens_map.json").string());

  // Like sanitize_special_tokens(): special tokens missing from the vocabulary are added (in transformers'
  // attribute order), and all of them become no-split tokens.
  std::vector<SpecialToken*> specials = {&tok.bos_token_, &tok.eos_token_, &tok.unk_token_, &tok.pad_token_};
  for (auto& t : additional) specials.push_back(&t);
  for (SpecialToken* t : specials) {
    if (t->content != tok.unk_token_.content && !tok.token_to_id(t->content)) tok.add_new_token(t->content);
    tok.register_no_split(t->content);
    // transformers keys AddedToken flags by string; a later attribute with the same string wins.
    if (t->is_added_token) tok.special_extended_[t->content] = *t;
  }
  auto id_of = [&](const SpecialToken& t, const char* key) {
    auto id = tok.token_to_id(t.content);
    COLLAGE_CHECK_AT(id.has_value(), vocab_path, key, "special token '{}' is not in the vocabulary", t.content);
    return *id;
  };
  tok.unk_id_ = id_of(tok.unk_token_, "unk_token");
  tok.bos_id_ = id_of(tok.bos_token_, "bos_token");
  tok.eos_id_ = id_of(tok.eos_token_, "eos_token");
  tok.pad_id_ = id_of(tok.pad_token_, "pad_token");
  return tok;
}

int64_t ClipTokenizer::vocab_size() const {
  return static_cast<int64_t>(encoder_.size() + added_encoder_.size());
}

void ClipTokenizer::register_no_split(const std::string& token) {
  if (token.empty() || std::find(no_split_.begin(), no_split_.end(), token) != no_split_.end()) return;
  no_split_.push_back(token);
}

int64_t ClipTokenizer::add_new_token(const std::string& token) {
  const int64_t id = vocab_size();
  added_encoder_[token] = id;
  added_decoder_[id] = token;
  return id;
}

int64_t ClipTokenizer::add_token(const std::string& token) {
  COLLAGE_CHECK(!token.empty(), "cannot add an empty token");
  auto it = added_encoder_.find(token);
  if (it != added_encoder_.end()) {
    register_no_split(token);
    return it->second;
  }
  COLLAGE_CHECK(!encoder_.count(token),
                "token '{}' is already in the tokenizer vocabulary; choose a token string that is not", token);
  const int64_t id = add_new_token(token);
  register_no_split(token);
  return id;
}

std::optional<int64_t> ClipTokenizer::token_to_id(const std::string& token) const {
  if (auto it = added_encoder_.find(token); it != added_encoder_.end()) return it->second;
  if (auto it = encoder_.find(token); it != encoder_.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> ClipTokenizer::id_to_token(int64_t id) const {
  if (auto it = added_decoder_.find(id); it != added_decoder_.end()) return it->second;
  if (auto it = decoder_.find(id); it != decoder_.end()) return it->second;
  return std::nullopt;
}

int64_t ClipTokenizer::convert_token(const std::string& token) const {
  return token_to_id(token).value_or(unk_id_);
}

std::vector<std::string> ClipTokenizer::tokenize(const std::string& text) const {
  // Split out no-split tokens (leftmost, then longest, as transformers' Trie.split), on the raw text.
  struct Segment {
    std::string text;
    bool special;
  };
  std::vector<Segment> segments;
  std::string pending;
  for (size_t pos = 0; pos < text.size();) {
    const std::string* best = nullptr;
    for (const auto& t : no_split_)
      if (text.compare(pos, t.size(), t) == 0 && (!best || t.size() > best->size())) best = &t;
    if (best) {
      if (!pending.empty()) segments.push_back({std::move(pending), false});
      pending.clear();
      segments.push_back({*best, true});
      pos += best->size();
    } else {
      pending.push_back(text[pos++]);
    }
  }
  if (!pending.empty()) segments.push_back({std::move(pending), false});

  // Neighbour stripping around no-split tokens (PreTrainedTokenizer.tokenize of transformers 4.33).
  for (size_t i = 0; i < segments.size(); ++i) {
    if (!segments[i].special) continue;
    const bool has_left = i > 0 && !segments[i - 1].text.empty();
    const bool has_right = i + 1 < segments.size() && !segments[i + 1].text.empty();
    auto ext = special_extended_.find(segments[i].text);
    if (ext != special_extended_.end()) {
      const SpecialToken& t = ext->second;
      if (t.rstrip && has_right) segments[i + 1].text = py_strip(segments[i + 1].text, true, false);
      if (t.lstrip && has_left) segments[i - 1].text = py_strip(segments[i - 1].text, false, true);
      if (t.single_word && has_left && segments[i - 1].text.back() != ' ') {
        segments[i - 1].text += segments[i].text;
        segments[i].text.clear();
      } else if (t.single_word && has_right && segments[i + 1].text.front() != ' ') {
        segments[i].text += segments[i + 1].text;
        segments[i + 1].text.clear();
      }
    } else {
      if (has_right) segments[i + 1].text = py_strip(segments[i + 1].text, true, false);
      if (has_left) segments[i - 1].text = py_strip(segments[i - 1].text, false, true);
    }
  }

  std::vector<std::string> tokens;
  for (const auto& s : segments) {
    if (s.text.empty()) continue;
    if (std::find(no_split_.begin(), no_split_.end(), s.text) != no_split_.end()) {
      tokens.push_back(s.text);
    } else {
      auto sub = tokenize_segment(s.text);
      tokens.insert(tokens.end(), sub.begin(), sub.end());
    }
  }
  return tokens;
}

std::vector<std::string> ClipTokenizer::tokenize_segment(const std::string& text) const {
  const std::u32string cleaned = unicode::to_lower(whitespace_clean(ftfy::fix_text(unicode::from_utf8(text))));
  std::vector<std::string> tokens;
  for (const std::u32string& piece : pre_tokenize(cleaned)) {
    auto sub = bpe(unicode::to_utf8(piece));
    tokens.insert(tokens.end(), sub.begin(), sub.end());
  }
  return tokens;
}

std::vector<std::string> ClipTokenizer::bpe(const std::string& piece_utf8) const {
  std::string key;
  std::vector<std::string> word;  // one byte-unicode symbol per UTF-8 byte
  for (unsigned char b : piece_utf8) {
    key += byte_encoder_[b];
    word.push_back(byte_encoder_[b]);
  }
  // transformers seeds its BPE cache with the two special strings, which therefore never get "</w>".
  if (key == "<|startoftext|>" || key == "<|endoftext|>") return {key};
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->bpe.find(key);
    if (it != cache_->bpe.end()) return it->second;
  }
  if (word.empty()) return {};
  word.back() += "</w>";
  while (word.size() > 1) {
    int best_rank = INT_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = bpe_ranks_.find(join_pair(word[i], word[i + 1]));
      if (it != bpe_ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT_MAX) break;
    const std::string first = word[best], second = word[best + 1];
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word = std::move(merged);
  }
  std::lock_guard<std::mutex> lock(cache_->mutex);
  cache_->bpe.emplace(key, word);
  return word;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids{bos_id_};
  for (const auto& t : tokenize(text)) ids.push_back(convert_token(t));
  ids.push_back(eos_id_);
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode_padded(const std::string& text, int64_t max_length) const {
  COLLAGE_CHECK(max_length >= 2, "max_length must leave room for bos and eos, got {}", max_length);
  std::vector<int64_t> ids{bos_id_};
  const auto tokens = tokenize(text);
  const size_t keep = std::min(tokens.size(), static_cast<size_t>(max_length - 2));
  for (size_t i = 0; i < keep; ++i) ids.push_back(convert_token(tokens[i]));
  ids.push_back(eos_id_);
  ids.resize(static_cast<size_t>(max_length), pad_id_);
  return ids;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> parts;
  std::string bytes;  // pending byte-level text of vocabulary tokens
  auto flush = [&] {
    if (bytes.empty()) return;
    std::string text = unicode::to_utf8(unicode::from_utf8(bytes));  // invalid UTF-8 -> U+FFFD
    std::string spaced;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, 4, "</w>") == 0) {
        spaced += ' ';
        i += 4;
      } else {
        spaced += text[i++];
      }
    }
    parts.push_back(py_strip(spaced, true, true));
    bytes.clear();
  };
  for (int64_t id : ids) {
    if (auto it = added_decoder_.find(id); it != added_decoder_.end()) {
      flush();
      parts.push_back(it->second);
      continue;
    }
    auto it = decoder_.find(id);
    if (it == decoder_.end()) continue;
    const std::u32string symbols = unicode::from_utf8(it->second);
    for (char32_t c : symbols) {
      std::string s;
      unicode::append_utf8(s, c);
      auto b = byte_decoder_.find(s);
      if (b != byte_decoder_.end())
        bytes.push_back(static_cast<char>(b->second));
      else
        bytes += s;  // not a byte-level symbol (a hand-made vocabulary): keep it as text
    }
  }
  flush();
  std::string out;
  for (const auto& p : parts) {
    if (p.empty()) continue;
    if (!out.empty()) out += ' ';
    out += p;
  }
  return out;
}

}  // namespace collage
