// CLIP BPE tokenizer, bit-exact with transformers 4.33's slow CLIPTokenizer when ftfy is installed
// (the configuration of the golden data and of SD pipelines): special-token splitting, ftfy text
// cleaning, whitespace collapse, lower-casing, CLIP's regex pre-tokenizer, byte-level BPE.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace collage {

class ClipTokenizer {
 public:
  // Loads vocab.json + merges.txt (and added_tokens.json when present) from `dir`, and
  // tokenizer_config.json / special_tokens_map.json from `config_dir` (defaults to dir); the latter
  // overrides the former, as from_pretrained does. Special tokens may be strings or {"content": ...}
  // AddedToken dicts. SD1 pads with "<|endoftext|>" (49407), SD2 with "!" (id 0). A missing vocab or merges
  // file is a collage::Error naming the path; missing config files mean CLIP's defaults (max length 77).
  static ClipTokenizer from_folder(const std::string& dir, const std::string& config_dir = "");

  // BPE token strings (byte-unicode, "</w>" word ends), no bos/eos.
  std::vector<std::string> tokenize(const std::string& text) const;
  // bos + ids + eos, untruncated.
  std::vector<int64_t> encode(const std::string& text) const;
  // Truncates to bos + the first max_length-2 ids + eos, then pads with pad_id to max_length.
  std::vector<int64_t> encode_padded(const std::string& text, int64_t max_length = 77) const;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t model_max_length() const { return model_max_length_; }
  const std::string& pad_token() const { return pad_token_.content; }
  int64_t vocab_size() const;  // including added tokens

  // Textual inversion: registers a new whole-word token (e.g. "<layer_0>") and returns its id
  // (= vocab_size() before the call). Like special tokens, its occurrences are split out of the raw text
  // before cleaning and BPE. Adding a token that is already an added token returns its id; a token of the
  // base vocabulary is an error (diffusers refuses those too).
  int64_t add_token(const std::string& token);
  std::optional<int64_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int64_t id) const;
  // Best-effort text for logs: byte-level decoding, "</w>" -> space; added tokens verbatim.
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  // transformers' AddedToken flags; a plain-string special token strips both neighbours by default.
  struct SpecialToken {
    std::string content;
    bool lstrip = false, rstrip = false, single_word = false;
    bool is_added_token = false;  // given as an AddedToken (dict) rather than a plain string
  };
  struct Cache;

  ClipTokenizer();
  void register_no_split(const std::string& token);
  int64_t add_new_token(const std::string& token);
  std::vector<std::string> tokenize_segment(const std::string& text) const;  // transformers' _tokenize
  std::vector<std::string> bpe(const std::string& piece_utf8) const;
  int64_t convert_token(const std::string& token) const;

  std::unordered_map<std::string, int64_t> encoder_;        // vocab.json
  std::unordered_map<int64_t, std::string> decoder_;
  std::unordered_map<std::string, int64_t> added_encoder_;  // added tokens (ids after the vocab)
  std::unordered_map<int64_t, std::string> added_decoder_;
  std::unordered_map<std::string, int> bpe_ranks_;          // "first second" -> merge rank
  std::array<std::string, 256> byte_encoder_;               // byte -> UTF-8 of its byte-unicode char
  std::unordered_map<std::string, unsigned char> byte_decoder_;
  std::vector<std::string> no_split_;                       // split out of the raw text, longest match first
  std::map<std::string, SpecialToken> special_extended_;    // AddedToken flags of the special tokens
  SpecialToken bos_token_, eos_token_, unk_token_, pad_token_;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0, model_max_length_ = 77;
  std::shared_ptr<Cache> cache_;  // BPE results by piece; shared so that the tokenizer stays copyable
};

}  // namespace collage
