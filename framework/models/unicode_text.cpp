#include "models/unicode_text.h"

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "core/core.h"

namespace collage::unicode {
namespace {

constexpr char32_t kReplacement = 0xFFFD;

icu::UnicodeString to_icu(const std::u32string& text) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(text.data()),
                                       static_cast<int32_t>(text.size()));
}

std::u32string from_icu(const icu::UnicodeString& s) {
  std::u32string out;
  out.reserve(s.length());
  for (int32_t i = 0; i < s.length();) {
    UChar32 c = s.char32At(i);
    out.push_back(static_cast<char32_t>(c));
    i += U16_LENGTH(c);
  }
  return out;
}

std::u32string normalize(const std::u32string& text, bool compat) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* norm =
      compat ? icu::Normalizer2::getNFKCInstance(status) : icu::Normalizer2::getNFCInstance(status);
  COLLAGE_CHECK(U_SUCCESS(status), "ICU normaliser unavailable: {}", u_errorName(status));
  icu::UnicodeString src = to_icu(text);
  if (norm->isNormalized(src, status) && U_SUCCESS(status)) return text;
  status = U_ZERO_ERROR;
  icu::UnicodeString dst = norm->normalize(src, status);
  COLLAGE_CHECK(U_SUCCESS(status), "ICU normalisation failed: {}", u_errorName(status));
  return from_icu(dst);
}

// Length of the UTF-8 sequence a lead byte announces and the valid range of its second byte
// (the Unicode "well-formed byte sequences" table, which is what Python enforces).
struct Lead {
  int length;
  unsigned char lo, hi;
};
Lead lead_info(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Decodes one well-formed sequence at bytes[i]; returns its length, or 0 if ill-formed there.
size_t decode_one(std::string_view bytes, size_t i, char32_t& c) {
  const auto b0 = static_cast<unsigned char>(bytes[i]);
  Lead lead = lead_info(b0);
  if (lead.length == 0) return 0;
  if (lead.length == 1) {
    c = b0;
    return 1;
  }
  if (i + lead.length > bytes.size()) return 0;
  const auto b1 = static_cast<unsigned char>(bytes[i + 1]);
  if (b1 < lead.lo || b1 > lead.hi) return 0;
  char32_t v = b0 & (0xFF >> (lead.length + 1));
  v = (v << 6) | (b1 & 0x3F);
  for (int k = 2; k < lead.length; ++k) {
    const auto b = static_cast<unsigned char>(bytes[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b & 0x3F);
  }
  c = v;
  return static_cast<size_t>(lead.length);
}

}  // namespace

std::u32string from_utf8(std::string_view utf8) {
  std::u32string out;
  out.reserve(utf8.size());
  for (size_t i = 0; i < utf8.size();) {
    char32_t c;
    size_t n = decode_one(utf8, i, c);
    if (n == 0) {
      out.push_back(kReplacement);
      ++i;
    } else {
      out.push_back(c);
      i += n;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) c = kReplacement;
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string to_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

bool decode_utf8_strict(std::string_view bytes, std::u32string& out, bool java_variants) {
  out.clear();
  auto at = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  auto cont = [&](size_t k, unsigned lo, unsigned hi) { return at(k) >= lo && at(k) <= hi; };
  for (size_t i = 0; i < bytes.size();) {
    if (java_variants) {
      if (at(i) == 0xC0 && i + 1 < bytes.size() && at(i + 1) == 0x80) {
        out.push_back(0);
        i += 2;
        continue;
      }
      // CESU-8: a UTF-16 surrogate pair written as two 3-byte sequences.
      if (at(i) == 0xED && i + 6 <= bytes.size() && cont(i + 1, 0xA0, 0xAF) && cont(i + 2, 0x80, 0xBF) &&
          at(i + 3) == 0xED && cont(i + 4, 0xB0, 0xBF) && cont(i + 5, 0x80, 0xBF)) {
        char32_t c = ((at(i + 1) & 0x0F) << 16) + ((at(i + 2) & 0x3F) << 10) + ((at(i + 4) & 0x0F) << 6) +
                     (at(i + 5) & 0x3F) + 0x10000;
        out.push_back(c);
        i += 6;
        continue;
      }
    }
    char32_t c;
    size_t n = decode_one(bytes, i, c);
    if (n == 0) return false;
    out.push_back(c);
    i += n;
  }
  return true;
}

std::u32string nfc(const std::u32string& text) { return normalize(text, false); }
std::u32string nfkc(const std::u32string& text) { return normalize(text, true); }

std::u32string to_lower(const std::u32string& text) {
  bool ascii = true;
  for (char32_t c : text) ascii = ascii && c < 0x80;
  if (ascii) {
    std::u32string out = text;
    for (char32_t& c : out)
      if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
    return out;
  }
  icu::UnicodeString s = to_icu(text);
  s.toLower(icu::Locale::getRoot());
  return from_icu(s);
}

char32_t simple_fold(char32_t c) { return static_cast<char32_t>(u_foldCase(static_cast<UChar32>(c), U_FOLD_CASE_DEFAULT)); }

bool is_letter(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; }
bool is_number(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }
bool is_white_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }
bool is_py_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }
bool is_py_word(char32_t c) {
  if (c == '_' || is_letter(c)) return true;
  return u_getIntPropertyValue(static_cast<UChar32>(c), UCHAR_NUMERIC_TYPE) != U_NT_NONE;
}

}  // namespace collage::unicode
