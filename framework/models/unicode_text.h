// Unicode helpers for the CLIP tokenizer and its ftfy-style text cleaning (private to framework/models).
// Text is handled as UTF-32 (one char32_t per code point), like a Python str; ICU supplies the Unicode
// database (categories, normalisation, case mapping).
#pragma once

#include <string>
#include <string_view>

namespace collage::unicode {

// UTF-8 -> code points. Invalid bytes become U+FFFD (like Python's errors="replace").
std::u32string from_utf8(std::string_view utf8);
// Code points -> UTF-8. Surrogates and values past U+10FFFF become U+FFFD.
std::string to_utf8(std::u32string_view text);
void append_utf8(std::string& out, char32_t c);

// Strict UTF-8 decoding as Python's bytes.decode("utf-8"): false on any invalid, overlong, surrogate or
// truncated sequence. `java_variants` also accepts CESU-8 surrogate pairs and the Java null C0 80
// (ftfy's "utf-8-variants" codec).
bool decode_utf8_strict(std::string_view bytes, std::u32string& out, bool java_variants = false);

std::u32string nfc(const std::u32string& text);
std::u32string nfkc(const std::u32string& text);
// Full lower-case mapping in the root locale (= Python's str.lower(): final sigma, U+0130 -> i + U+0307).
std::u32string to_lower(const std::u32string& text);
// Simple case folding of one code point (what a case-insensitive regex compares).
char32_t simple_fold(char32_t c);

bool is_letter(char32_t c);       // \p{L}
bool is_number(char32_t c);       // \p{N}
bool is_white_space(char32_t c);  // \p{White_Space} (the `regex` module's \s)
bool is_py_space(char32_t c);     // Python str.isspace() (the `re` module's \s)
bool is_py_word(char32_t c);      // Python `re` \w: str.isalnum() or '_'

}  // namespace collage::unicode
