// A reimplementation of ftfy 6.1.1 `fix_text` (default TextFixerConfig), the text-cleaning step of
// transformers' slow CLIPTokenizer. Python's regular expressions are replaced by small hand-written
// matchers over the same character sets; data tables come from scripts/gen_ftfy_tables.py.
#include "models/ftfy.h"

#include <unicode/uchar.h>

#include <array>
#include <bitset>
#include <cstdint>
#include <initializer_list>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "models/unicode_text.h"

namespace collage::ftfy {
namespace {

using u32 = std::u32string;
using u32view = std::u32string_view;

#include "models/ftfy_tables.inc"

constexpr char32_t kReplacement = 0xFFFD;
constexpr uint32_t kUndefined = 0xFFFFFFFF;

// ---------------------------------------------------------------------------------------------------
// Character classes and sequence patterns (enough of Python `re` for ftfy's badness expressions).

struct CharClass {
  enum Special { kNone, kPySpace, kPyWord, kNotNewline };
  std::vector<std::pair<char32_t, char32_t>> ranges;
  bool negated = false;
  Special special = kNone;

  bool contains(char32_t c) const {
    switch (special) {
      case kPySpace: return unicode::is_py_space(c);
      case kPyWord: return unicode::is_py_word(c);
      case kNotNewline: return c != U'\n';
      case kNone: break;
    }
    bool in = false;
    for (const auto& r : ranges)
      if (c >= r.first && c <= r.second) {
        in = true;
        break;
      }
    return in != negated;
  }
};

// Builds a class from strings written like the inside of a regex [...]: "a-z" is a range.
CharClass cls(std::initializer_list<u32view> parts, bool negated = false) {
  CharClass out;
  out.negated = negated;
  for (u32view s : parts)
    for (size_t i = 0; i < s.size();) {
      if (i + 2 < s.size() && s[i + 1] == U'-') {
        out.ranges.emplace_back(s[i], s[i + 2]);
        i += 3;
      } else {
        out.ranges.emplace_back(s[i], s[i]);
        ++i;
      }
    }
  return out;
}

CharClass special_class(CharClass::Special s) {
  CharClass out;
  out.special = s;
  return out;
}

struct Atom {
  CharClass cls;
  bool optional = false;
};

struct Pattern {
  std::vector<Atom> atoms;
  bool at_start = false;  // '^'
};

bool match_from(const Pattern& p, u32view text, size_t pos, size_t k) {
  if (k == p.atoms.size()) return true;
  const Atom& a = p.atoms[k];
  if (pos < text.size() && a.cls.contains(text[pos]) && match_from(p, text, pos + 1, k + 1)) return true;
  return a.optional && match_from(p, text, pos, k + 1);
}

// The mojibake character categories of ftfy 6.1.1 (badness.MOJIBAKE_CATEGORIES).
struct Categories {
  const u32 common = U"\u00A0\u00AD\u00B7\u00B4\u2013\u2014\u2015\u2026\u2019";
  const u32 c1 = U"\u0080-\u009F";
  const u32 bad =
      U"\u00A6\u00A4\u00A8\u00AC\u00AF\u00B6\u00A7\u00B8\u0192\u02C6\u02C7\u02D8\u02DB\u02DC\u2020\u2021\u2030"
      U"\u2310\u25CA\uFFFD\u00AA\u00BA";
  const u32 currency = U"\u00A2\u00A3\u00A5\u20A7\u20AC";
  const u32 start_punctuation =
      U"\u00A1\u00AB\u00BF\u00A9\u0384\u0385\u2018\u201A\u201C\u201E\u2022\u2039\uF8FF";
  const u32 end_punctuation = U"\u00AE\u00BB\u02DD\u201D\u203A\u2122";
  const u32 numeric =
      U"\u00B2\u00B3\u00B9\u00B1\u00BC\u00BD\u00BE\u00D7\u00B5\u00F7\u2044\u2202\u2206\u220F\u2211\u221A\u221E"
      U"\u2229\u222B\u2248\u2260\u2261\u2264\u2265\u2116";
  const u32 kaomoji = U"\u00D2-\u00D6\u00D9-\u00DC\u00F2-\u00F6\u00F8-\u00FC\u0150\u00B0";
  const u32 upper_accented =
      U"\u00C0-\u00D1\u00D8\u00DC\u00DD\u0102\u0104\u0106\u010C\u010E\u0110\u0118\u011A\u011E\u0130\u0139\u013D"
      U"\u0141\u0143\u0147\u0152\u0158\u015A\u015E\u0160\u0162\u0164\u016E\u0170\u0178\u0179\u017B\u017D\u0490";
  const u32 lower_accented =
      U"\u00DF\u00E0-\u00F1\u0103\u0105\u0107\u010D\u010F\u0111\u0119\u011B\u011F\u013A\u013E\u0142\u0153\u0155"
      U"\u015B\u015F\u0161\u0165\u00FC\u017A\u017C\u017E\u0491\uFB01\uFB02";
  const u32 upper_common =
      U"\u00DE\u0391-\u03A9\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u03AA\u03AB\u0401-\u042F";
  const u32 lower_common = U"\u03B1-\u03C9\u03AC\u03AD\u03AE\u03AF\u03B0\u0430-\u045F";
  const u32 box =
      U"\u2502\u250C\u2510\u2518\u251C\u2524\u252C\u253C\u2550-\u256C\u2580\u2584\u2588\u258C\u2590\u2591\u2592"
      U"\u2593";
};

// badness.BADNESS_RE of ftfy 6.1.1, one Pattern per alternative.
std::vector<Pattern> build_badness_patterns() {
  const Categories k;
  auto A = [](CharClass c, bool optional = false) { return Atom{std::move(c), optional}; };
  auto lit = [](char32_t c) { return Atom{cls({u32view(&c, 1)})}; };
  const CharClass space = special_class(CharClass::kPySpace);
  const CharClass word = special_class(CharClass::kPyWord);
  const CharClass any = special_class(CharClass::kNotNewline);
  std::vector<Pattern> p;
  auto add = [&](std::vector<Atom> atoms, bool at_start = false) { p.push_back({std::move(atoms), at_start}); };

  add({A(cls({k.c1}))});
  add({A(cls({k.bad, k.lower_accented, k.upper_accented, k.box, k.start_punctuation, k.end_punctuation,
              k.currency, k.numeric})),
       A(cls({k.bad}))});
  add({A(cls({U"a-zA-Z"})), A(cls({k.lower_common, k.upper_common})), A(cls({k.bad}))});
  add({A(cls({k.bad})), A(cls({k.lower_accented, k.upper_accented, k.box, k.start_punctuation,
                               k.end_punctuation, k.currency, k.numeric}))});
  add({A(cls({k.lower_accented, k.lower_common, k.box, k.end_punctuation, k.currency, k.numeric})),
       A(cls({k.upper_accented}))});
  add({A(cls({k.box, k.end_punctuation, k.currency, k.numeric})), A(cls({k.lower_accented}))});
  add({A(cls({k.lower_accented, k.box, k.end_punctuation})), A(cls({k.currency}))});
  add({A(space), A(cls({k.upper_accented})), A(cls({k.currency}))});
  add({A(cls({k.upper_accented, k.box})), A(cls({k.numeric}))});
  add({A(cls({k.lower_accented, k.upper_accented, k.box, k.currency, k.end_punctuation})),
       A(cls({k.start_punctuation})), A(cls({k.numeric}))});
  add({A(cls({k.lower_accented, k.upper_accented, k.currency, k.numeric, k.box})),
       A(cls({k.end_punctuation})), A(cls({k.start_punctuation}))});
  add({A(cls({k.currency, k.numeric, k.box})), A(cls({k.start_punctuation}))});
  add({A(cls({U"a-z"})), A(cls({k.upper_accented})), A(cls({k.start_punctuation, k.currency}))});
  add({A(cls({k.box})), A(cls({k.kaomoji}))});
  add({A(cls({k.lower_accented, k.upper_accented, k.currency, k.numeric, k.start_punctuation,
              k.end_punctuation})),
       A(cls({k.box}))});
  add({A(cls({k.box})), A(cls({k.end_punctuation}))});
  add({A(cls({k.lower_accented, k.upper_accented})), A(cls({k.end_punctuation})), A(word)});
  // The ligature oe when not followed by an unaccented Latin letter.
  add({A(cls({U"\u0152\u0153"})), A(cls({U"A-Za-z"}, /*negated=*/true))});
  // Common Windows-1252 two-character mojibake.
  add({A(cls({U"\u00C2\u00C3\u00CE\u00D0"})),
       A(cls({U"\u20AC\u0160\u0161\u00A2\u00A3\u0178\u017E\u00A0\u00AD\u00AE\u00A9\u00B0\u00B7\u00BB",
              k.start_punctuation, k.end_punctuation, U"\u2013\u2014\u00B4"}))});
  add({lit(U'\u00D7'), A(cls({U"\u00B2\u00B3"}))});
  // Windows-1252 mojibake of Arabic words: four characters.
  {
    const CharClass arabic_lead = cls({U"\u00D8\u00D9"});
    const CharClass arabic_next = cls({k.common, k.currency, k.bad, k.numeric, k.start_punctuation,
                                       U"\u0178\u0160\u00AE\u00B0\u00B5\u00BB"});
    add({A(arabic_lead), A(arabic_next), A(arabic_lead), A(arabic_next)});
  }
  add({lit(U'\u00E0'), A(cls({U"\u00B2\u00B5\u00B9\u00BC\u00BD\u00BE"}))});
  // MacRoman mojibake.
  add({lit(U'\u221A'), A(cls({U"\u00B1\u2202\u2020\u2260\u00AE\u2122\u00B4\u2264\u2265\u00A5\u00B5\u00F8"}))});
  add({lit(U'\u2248'), A(cls({U"\u00B0\u00A2"}))});
  add({lit(U'\u201A'), lit(U'\u00C4'),
       A(cls({U"\u00EC\u00EE\u00EF\u00F2\u00F4\u00FA\u00F9\u00FB\u2020\u00B0\u00A2\u03C0"}))});
  add({lit(U'\u201A'), A(cls({U"\u00E2\u00F3"})), A(cls({U"\u00E0\u00E4\u00B0\u00EA"}))});
  // Windows-1251 mojibake.
  add({lit(U'\u0432'), lit(U'\u0402')});
  {
    const CharClass cyr = cls({U"\u0412\u0413\u0420\u0421"});
    add({A(cyr),
         A(cls({k.c1, k.bad, k.start_punctuation, k.end_punctuation, k.currency, U"\u00B0\u00B5"})),
         A(cyr)});
  }
  add({lit(U'\u0413'), lit(U'\u045E'), lit(U'\u0412'), lit(U'\u0402'), lit(U'\u0412'), A(any),
       A(cls({U"A-Za-z "}))});
  // Windows-1252 encodings of a-grave and a-acute, and of U+A0 itself.
  add({lit(U'\u00C3'), A(cls({U"\u00A0\u00A1"}))});
  add({A(cls({U"a-z"})), A(space, /*optional=*/true), A(cls({U"\u00C3\u00C2"})), lit(U' ')});
  add({A(cls({U"\u00C3\u00C2"})), lit(U' ')}, /*at_start=*/true);
  add({A(cls({U"a-z.,?!", k.end_punctuation})), lit(U'\u00C2'),
       A(cls({U" ", k.start_punctuation, k.end_punctuation}))});
  // Windows-1253 mojibake.
  add({lit(U'\u03B2'), lit(U'\u20AC'), A(cls({U"\u2122\u00A0\u0386\u00AD\u00AE\u00B0"}))});
  {
    const CharClass greek = cls({U"\u0392\u0393\u039E\u039F"});
    add({A(greek), A(cls({k.c1, k.bad, k.start_punctuation, k.end_punctuation, k.currency, U"\u00B0"})),
         A(greek)});
  }
  return p;
}

const std::vector<Pattern>& badness_patterns() {
  static const std::vector<Pattern> patterns = build_badness_patterns();
  return patterns;
}

// chardata.UTF8_CLUES of ftfy 6.1.1.
struct Utf8Clues {
  CharClass first_of_2 = cls(
      {U"\u00C2\u00C3\u00C4\u00C5\u00C6\u00C7\u00C8\u00C9\u00CA\u00CB\u00CC\u00CD\u00CE\u00CF\u00D0\u00D1\u00D2"
       U"\u00D3\u00D4\u00D5\u00D6\u00D7\u00D8\u00D9\u00DA\u00DB\u00DC\u00DD\u00DE\u00DF\u0102\u0106\u010C\u010E"
       U"\u0110\u0118\u011A\u011E\u0130\u0139\u0143\u0147\u0150\u0158\u015E\u0162\u016E\u0170\u0392\u0393\u0394"
       U"\u0395\u0396\u0397\u0398\u0399\u039A\u039B\u039C\u039D\u039E\u039F\u03A0\u03A1\u03A3\u03A4\u03A5\u03A6"
       U"\u03A7\u03A8\u03A9\u03AA\u03AB\u03AC\u03AD\u03AE\u03AF\u0412\u0413\u0414\u0415\u0416\u0417\u0418\u0419"
       U"\u041A\u041B\u041C\u041D\u041E\u041F\u0420\u0421\u0422\u0423\u0424\u0425\u0426\u0427\u0428\u0429\u042A"
       U"\u042B\u042C\u042D\u042E\u042F"});
  CharClass first_of_3 = cls(
      {U"\u00E0\u00E1\u00E2\u00E3\u00E4\u00E5\u00E6\u00E7\u00E8\u00E9\u00EA\u00EB\u00EC\u00ED\u00EE\u00EF\u0103"
       U"\u0107\u010D\u010F\u0119\u011B\u013A\u0155\u03B0\u03B1\u03B2\u03B3\u03B4\u03B5\u03B6\u03B7\u03B8\u03B9"
       U"\u03BA\u03BB\u03BC\u03BD\u03BE\u03BF\u0430\u0431\u0432\u0433\u0434\u0435\u0436\u0437\u0438\u0439\u043A"
       U"\u043B\u043C\u043D\u043E\u043F"});
  CharClass first_of_4 = cls({U"\u00F0\u00F3\u0111\u011F\u03C0\u03C3\u0440\u0443"});
  // Letters that decode to 0x80-0xBF in a Latin-1-like code page (shared by both continuation sets).
  static constexpr const char32_t* kContinuationLetters =
      U"\u0080-\u00BF\u0104\u0105\u013D\u013E\u0141\u0142\u0152\u0153\u015A\u015B\u015E\u015F\u0160\u0161\u0164"
      U"\u0165\u0178\u0179\u017A\u017B\u017C\u017D\u017E\u0192\u02C6\u02C7\u02D8\u02DB\u02DC\u02DD\u0384\u0385"
      U"\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u0401\u0402\u0403\u0404\u0405\u0406\u0407\u0408\u0409\u040A"
      U"\u040B\u040C\u040E\u040F\u0451\u0452\u0453\u0454\u0455\u0456\u0457\u0458\u0459\u045A\u045B\u045C\u045E"
      U"\u045F\u0490\u0491";
  CharClass continuation = cls({kContinuationLetters,
                                U"\u2013\u2014\u2015\u2018\u2019\u201A\u201C\u201D\u201E\u2020\u2021\u2022"
                                U"\u2026\u2030\u2039\u203A\u20AC\u2116\u2122\u0020"});
  CharClass continuation_strict =
      cls({kContinuationLetters, U"\u2020\u2021\u2022\u2030\u2039\u203A\u20AC\u2116\u2122"});
};

const Utf8Clues& utf8_clues() {
  static const Utf8Clues clues;
  return clues;
}

// UTF8_DETECTOR_RE at `pos`: (?<![continuation_strict])([first2][cont]|[first3][cont]{2}|[first4][cont]{3})+.
// Returns the end of the match, or pos when there is none.
size_t utf8_detector_match(u32view text, size_t pos) {
  const Utf8Clues& k = utf8_clues();
  if (pos > 0 && k.continuation_strict.contains(text[pos - 1])) return pos;
  auto conts = [&](size_t from, size_t count) {
    if (from + count > text.size()) return false;
    for (size_t i = 0; i < count; ++i)
      if (!k.continuation.contains(text[from + i])) return false;
    return true;
  };
  size_t p = pos;
  while (p < text.size()) {
    const char32_t c = text[p];
    if (k.first_of_2.contains(c) && conts(p + 1, 1))
      p += 2;
    else if (k.first_of_3.contains(c) && conts(p + 1, 2))
      p += 3;
    else if (k.first_of_4.contains(c) && conts(p + 1, 3))
      p += 4;
    else
      break;
  }
  return p;
}

bool utf8_detector_match_any(u32view text) {
  for (size_t pos = 0; pos < text.size(); ++pos)
    if (utf8_detector_match(text, pos) > pos) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------------
// Byte patterns (ALTERED_UTF8_RE, LOSSY_UTF8_RE) over encoded text.

using ByteSet = std::bitset<256>;
using BytePattern = std::vector<ByteSet>;

ByteSet bytes_of(std::initializer_list<std::pair<int, int>> ranges) {
  ByteSet s;
  for (auto [lo, hi] : ranges)
    for (int b = lo; b <= hi; ++b) s.set(static_cast<size_t>(b));
  return s;
}
ByteSet byte1(int b) { return bytes_of({{b, b}}); }

bool byte_match(const BytePattern& p, std::string_view bytes, size_t pos) {
  if (pos + p.size() > bytes.size()) return false;
  for (size_t i = 0; i < p.size(); ++i)
    if (!p[i].test(static_cast<unsigned char>(bytes[pos + i]))) return false;
  return true;
}

// re.sub over bytes with alternatives tried in order at each position.
template <typename Replace>
std::string byte_sub(std::string_view bytes, const std::vector<BytePattern>& alternatives, Replace replace) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    bool matched = false;
    for (const auto& p : alternatives)
      if (byte_match(p, bytes, pos)) {
        out += replace(bytes.substr(pos, p.size()));
        pos += p.size();
        matched = true;
        break;
      }
    if (!matched) out.push_back(bytes[pos++]);
  }
  return out;
}

const std::vector<BytePattern>& altered_utf8_patterns() {
  static const std::vector<BytePattern> p = [] {
    const ByteSet sp = byte1(0x20);
    const ByteSet cont = bytes_of({{0x80, 0xBF}});
    const ByteSet cont_no_85_a0 = bytes_of({{0x80, 0x84}, {0x86, 0x9F}, {0xA1, 0xBF}});
    const ByteSet f0 = byte1(0xF0);
    return std::vector<BytePattern>{
        {bytes_of({{0xC2, 0xC3}, {0xC5, 0xC5}, {0xCE, 0xCE}, {0xD0, 0xD0}, {0xD9, 0xD9}}), sp},
        {bytes_of({{0xE2, 0xE3}}), sp, cont_no_85_a0},
        {bytes_of({{0xE0, 0xE3}}), cont_no_85_a0, sp},
        {f0, sp, cont, cont},
        {f0, cont, sp, cont},
        {f0, cont, cont, sp},
    };
  }();
  return p;
}

const std::vector<BytePattern>& lossy_utf8_patterns() {
  static const std::vector<BytePattern> p = [] {
    const ByteSet sub = byte1(0x1A);
    const ByteSet sub_or_q = bytes_of({{0x1A, 0x1A}, {'?', '?'}});
    const ByteSet sub_or_cont = bytes_of({{0x1A, 0x1A}, {0x80, 0xBF}});
    const ByteSet any_cont = bytes_of({{0x1A, 0x1A}, {'?', '?'}, {0x80, 0xBF}});
    const ByteSet ed = byte1(0xED);
    const ByteSet e = bytes_of({{0xE0, 0xEF}});
    const ByteSet f = bytes_of({{0xF0, 0xF4}});
    return std::vector<BytePattern>{
        {bytes_of({{0xC2, 0xDF}}), sub},
        {bytes_of({{0xC2, 0xC3}}), byte1('?')},
        {ed, bytes_of({{0xA0, 0xAF}}), sub_or_q, ed, bytes_of({{0xB0, 0xBF}}), any_cont},
        {ed, bytes_of({{0xA0, 0xAF}}), any_cont, ed, bytes_of({{0xB0, 0xBF}}), sub_or_q},
        {e, sub_or_q, sub_or_cont},
        {e, sub_or_cont, sub_or_q},
        {f, sub_or_q, sub_or_cont, sub_or_cont},
        {f, sub_or_cont, sub_or_q, sub_or_cont},
        {f, sub_or_cont, sub_or_cont, sub_or_q},
        {sub},
    };
  }();
  return p;
}

bool byte_search(std::string_view bytes, const std::vector<BytePattern>& alternatives) {
  for (size_t pos = 0; pos < bytes.size(); ++pos)
    for (const auto& p : alternatives)
      if (byte_match(p, bytes, pos)) return true;
  return false;
}

// fixes.restore_byte_a0: a space that stands where byte A0 belonged inside a UTF-8 sequence.
std::string restore_byte_a0(std::string_view bytes) {
  // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )": keep "à" a word of its own.
  std::string step;
  for (size_t i = 0; i < bytes.size();) {
    if (static_cast<unsigned char>(bytes[i]) == 0xC3 && i + 1 < bytes.size() && bytes[i + 1] == ' ') {
      std::string_view rest = bytes.substr(i + 2);
      auto starts = [&](std::string_view w) { return rest.substr(0, w.size()) == w; };
      if (!(starts(" ") || starts("quele") || starts("quela") || starts("quilo") || starts("s "))) {
        step += "\xC3\xA0 ";
        i += 2;
        continue;
      }
    }
    step.push_back(bytes[i++]);
  }
  return byte_sub(step, altered_utf8_patterns(), [](std::string_view m) {
    std::string r(m);
    for (char& b : r)
      if (b == ' ') b = static_cast<char>(0xA0);
    return r;
  });
}

std::string replace_lossy_sequences(std::string_view bytes) {
  return byte_sub(bytes, lossy_utf8_patterns(), [](std::string_view) { return std::string("\xEF\xBF\xBD"); });
}

// ---------------------------------------------------------------------------------------------------
// Single-byte code pages.

struct Codec {
  std::string name;
  bool sloppy = false;
  const uint32_t* to_unicode = nullptr;
  std::unordered_map<char32_t, unsigned char> from_unicode;
};

const std::vector<Codec>& codecs() {
  static const std::vector<Codec> all = [] {
    std::vector<Codec> out;
    for (const auto& page : kCodePages) {
      Codec c;
      c.name = page.name;
      c.sloppy = c.name.rfind("sloppy-", 0) == 0;
      c.to_unicode = page.to_unicode;
      for (int b = 255; b >= 0; --b)
        if (page.to_unicode[b] != kUndefined) c.from_unicode[page.to_unicode[b]] = static_cast<unsigned char>(b);
      out.push_back(std::move(c));
    }
    return out;
  }();
  return all;
}
// kCodePages lists ftfy's CHARMAP_ENCODINGS first, then strict windows-1252.
constexpr size_t kNumCharmapEncodings = 9;
const Codec& codec_sloppy_1252() { return codecs()[1]; }
const Codec& codec_strict_1252() { return codecs()[kNumCharmapEncodings]; }

// chardata.possible_encoding: every character is ASCII (other than 0x1A) or what a byte 0x80-0xFF or 0x1A
// decodes to.
bool possible_encoding(u32view text, const Codec& codec) {
  for (char32_t c : text) {
    if (c < 0x80 && c != 0x1A) continue;
    auto it = codec.from_unicode.find(c);
    if (it == codec.from_unicode.end()) return false;
    if (it->second < 0x80 && it->second != 0x1A) return false;
  }
  return true;
}

std::string encode(u32view text, const Codec& codec) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) out.push_back(static_cast<char>(codec.from_unicode.at(c)));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Fixers.

bool is_ascii(u32view text) {
  for (char32_t c : text)
    if (c >= 0x80) return false;
  return true;
}

bool has_c1(u32view text) {
  for (char32_t c : text)
    if (c >= 0x80 && c <= 0x9F) return true;
  return false;
}

u32 fix_c1_controls(u32view text) {
  u32 out(text);
  const Codec& w = codec_sloppy_1252();
  for (char32_t& c : out)
    if (c >= 0x80 && c <= 0x9F) c = w.to_unicode[c];
  return out;
}

u32 decode_inconsistent_utf8(const u32& text) {
  u32 out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = utf8_detector_match(text, pos);
    if (end > pos) {
      u32 piece = text.substr(pos, end - pos);
      // Only shorter pieces, so that this cannot recurse forever.
      if (piece.size() < text.size() && is_bad(piece))
        out += fix_encoding(piece);
      else
        out += piece;
      pos = end;
    } else {
      out.push_back(text[pos++]);
    }
  }
  return out;
}

// ftfy._fix_encoding_one_step_and_explain.
u32 fix_encoding_one_step(const u32& text) {
  if (text.empty() || is_ascii(text) || !is_bad(text)) return text;
  bool latin1_possible = false;
  for (size_t e = 0; e < kNumCharmapEncodings; ++e) {
    const Codec& codec = codecs()[e];
    if (!possible_encoding(text, codec)) continue;
    if (e == 0) latin1_possible = true;
    std::string bytes = encode(text, codec);
    if (byte_search(bytes, altered_utf8_patterns())) bytes = restore_byte_a0(bytes);
    if (codec.sloppy) bytes = replace_lossy_sequences(bytes);
    const bool variants = bytes.find('\xED') != std::string::npos || bytes.find('\xC0') != std::string::npos;
    u32 fixed;
    if (unicode::decode_utf8_strict(bytes, fixed, variants)) return fixed;
  }
  if (utf8_detector_match_any(text)) {
    u32 fixed = decode_inconsistent_utf8(text);
    if (fixed != text) return fixed;
  }
  // ftfy checks `"windows-1252" in possible_1byte_encodings`, which never holds (only the sloppy name is
  // tried), so Latin-1 text always gets the strict Windows-1252 reading here.
  if (latin1_possible) {
    const Codec& w = codec_strict_1252();
    u32 fixed;
    bool ok = true;
    for (char32_t c : text) {
      const uint32_t u = w.to_unicode[c];
      if (u == kUndefined) {
        ok = false;
        break;
      }
      fixed.push_back(u);
    }
    if (ok && fixed != text) return fixed;
  }
  if (has_c1(text)) return fix_c1_controls(text);
  return text;
}

const std::unordered_map<std::string, std::string>& html_entities() {
  static const std::unordered_map<std::string, std::string> map = [] {
    std::unordered_map<std::string, std::string> m;
    for (const auto& e : kHtmlEntities) m.emplace(e.name, e.text);
    return m;
  }();
  return map;
}

bool is_ascii_alnum(char32_t c) {
  return (c >= U'0' && c <= U'9') || (c >= U'a' && c <= U'z') || (c >= U'A' && c <= U'Z');
}
bool is_hex(char32_t c) { return (c >= U'0' && c <= U'9') || (c >= U'a' && c <= U'f') || (c >= U'A' && c <= U'F'); }

// html.unescape of a numeric character reference body ("123" or "x7B"); nullopt-like false when the body is
// not a complete reference (then ftfy keeps the entity text).
bool numeric_charref(u32view body, u32& out) {
  if (body.empty()) return false;
  bool hex = body[0] == U'x' || body[0] == U'X';
  u32view digits = hex ? body.substr(1) : body;
  if (digits.empty()) return false;
  uint64_t num = 0;
  for (char32_t c : digits) {
    if (hex ? !is_hex(c) : !(c >= U'0' && c <= U'9')) return false;
    const uint64_t d = c <= U'9' ? c - U'0' : (c | 0x20) - U'a' + 10;
    num = num * (hex ? 16 : 10) + d;
    if (num > 0x10FFFF) num = 0x110000;  // saturate: all such values give U+FFFD
  }
  out.clear();
  if (num == 0x00) {
    out.push_back(kReplacement);
  } else if (num == 0x0D) {
    out.push_back(U'\r');
  } else if (num >= 0x80 && num <= 0x9F) {
    out.push_back(codec_sloppy_1252().to_unicode[num]);  // HTML5: Windows-1252 for C1 references
  } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out.push_back(kReplacement);
  } else if ((num >= 0x01 && num <= 0x08) || num == 0x0B || (num >= 0x0E && num <= 0x1F) ||
             (num >= 0x7F && num <= 0x9F) || (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE) {
    // html._invalid_codepoints become nothing
  } else {
    out.push_back(static_cast<char32_t>(num));
  }
  // ftfy keeps the entity when the decoded text still contains a ';' (a partial decode).
  if (out.find(U';') != u32::npos) return false;
  return true;
}

// Matches HTML_ENTITY_RE = "&#?[0-9A-Za-z]{1,24};" at pos; returns the end or pos.
size_t entity_match(u32view text, size_t pos) {
  if (text[pos] != U'&') return pos;
  auto run = [&](size_t from) -> size_t {
    size_t e = from;
    while (e < text.size() && is_ascii_alnum(text[e])) ++e;
    const size_t len = e - from;
    if (len >= 1 && len <= 24 && e < text.size() && text[e] == U';') return e + 1;
    return from;
  };
  if (pos + 1 < text.size() && text[pos + 1] == U'#') {
    const size_t e = run(pos + 2);
    if (e > pos + 2) return e;
  }
  const size_t e = run(pos + 1);
  return e > pos + 1 ? e : pos;
}

u32 fix_latin_ligatures(u32view text) {
  static const std::unordered_map<char32_t, u32view> ligatures = {
      {U'\u0132', U"IJ"}, {U'\u0133', U"ij"}, {U'\u0149', U"\u02BCn"}, {U'\u01F1', U"DZ"},
      {U'\u01F2', U"Dz"}, {U'\u01F3', U"dz"}, {U'\u01C4', U"D\u017D"}, {U'\u01C5', U"D\u017E"},
      {U'\u01C6', U"d\u017E"}, {U'\u01C7', U"LJ"}, {U'\u01C8', U"Lj"}, {U'\u01C9', U"lj"},
      {U'\u01CA', U"NJ"}, {U'\u01CB', U"Nj"}, {U'\u01CC', U"nj"}, {U'\uFB00', U"ff"},
      {U'\uFB01', U"fi"}, {U'\uFB02', U"fl"}, {U'\uFB03', U"ffi"}, {U'\uFB04', U"ffl"},
      {U'\uFB05', U"\u017Ft"}, {U'\uFB06', U"st"},
  };
  u32 out;
  out.reserve(text.size());
  for (char32_t c : text) {
    auto it = ligatures.find(c);
    if (it == ligatures.end())
      out.push_back(c);
    else
      out += it->second;
  }
  return out;
}

// chardata.WIDTH_MAP: U+3000 -> space, and the NFKC form of every changed character in U+FF01..U+FFEF.
u32 fix_character_width(u32view text) {
  static const std::unordered_map<char32_t, u32> width_map = [] {
    std::unordered_map<char32_t, u32> m;
    m.emplace(0x3000, u32(1, U' '));
    for (char32_t c = 0xFF01; c < 0xFFF0; ++c) {
      u32 alt = unicode::nfkc(u32(1, c));
      if (alt != u32(1, c)) m[c] = alt;
    }
    return m;
  }();
  u32 out;
  out.reserve(text.size());
  for (char32_t c : text) {
    auto it = (c == 0x3000 || (c >= 0xFF01 && c < 0xFFF0)) ? width_map.find(c) : width_map.end();
    if (it == width_map.end())
      out.push_back(c);
    else
      out += it->second;
  }
  return out;
}

u32 uncurl_quotes(u32view text) {
  u32 out(text);
  for (char32_t& c : out) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B))
      c = U'\'';
    else if (c >= 0x201C && c <= 0x201F)
      c = U'"';
  }
  return out;
}

u32 fix_line_breaks(u32view text) {
  u32 out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == U'\r') {
      out.push_back(U'\n');
      if (i + 1 < text.size() && text[i + 1] == U'\n') ++i;
    } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
      out.push_back(U'\n');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

u32 fix_surrogates(u32view text) {
  u32 out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < text.size() && text[i + 1] >= 0xDC00 && text[i + 1] <= 0xDFFF) {
      out.push_back(0x10000 + (c - 0xD800) * 0x400 + (text[i + 1] - 0xDC00));
      ++i;
    } else if (c >= 0xD800 && c <= 0xDFFF) {
      out.push_back(kReplacement);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// ANSI_RE = "\033\[((?:\d|;)*)([a-zA-Z])" (\d = any Unicode decimal digit).
u32 remove_terminal_escapes(u32view text) {
  u32 out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == U'[') {
      size_t j = i + 2;
      while (j < text.size() && (text[j] == U';' || u_charType(static_cast<UChar32>(text[j])) == U_DECIMAL_DIGIT_NUMBER))
        ++j;
      if (j < text.size() && ((text[j] >= U'a' && text[j] <= U'z') || (text[j] >= U'A' && text[j] <= U'Z'))) {
        i = j + 1;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
         c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

u32 remove_control_chars(u32view text) {
  u32 out;
  out.reserve(text.size());
  for (char32_t c : text)
    if (!is_removed_control(c)) out.push_back(c);
  return out;
}

// ftfy.fix_and_explain for one segment.
u32 fix_segment(u32 text, bool unescape) {
  if (text.find(U'<') != u32::npos) unescape = false;
  while (true) {
    const u32 orig = text;
    if (unescape) text = unescape_html(text);
    text = fix_encoding(text);
    text = fix_c1_controls(text);
    text = fix_latin_ligatures(text);
    text = fix_character_width(text);
    text = uncurl_quotes(text);
    text = fix_line_breaks(text);
    text = fix_surrogates(text);
    text = remove_terminal_escapes(text);
    text = remove_control_chars(text);
    text = unicode::nfc(text);
    if (text == orig) return text;
  }
}

}  // namespace

bool is_bad(const std::u32string& text) {
  const auto& patterns = badness_patterns();
  for (size_t pos = 0; pos < text.size(); ++pos)
    for (const auto& p : patterns) {
      if (p.at_start && pos != 0) continue;
      if (match_from(p, text, pos, 0)) return true;
    }
  return false;
}

std::u32string unescape_html(const std::u32string& text) {
  u32 out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = entity_match(text, pos);
    if (end == pos) {
      out.push_back(text[pos++]);
      continue;
    }
    const u32view entity(text.data() + pos, end - pos);
    const auto& table = html_entities();
    auto it = table.find(unicode::to_utf8(entity));
    u32 decoded;
    if (it != table.end())
      out += unicode::from_utf8(it->second);
    else if (entity.size() > 2 && entity[1] == U'#' && numeric_charref(entity.substr(2, entity.size() - 3), decoded))
      out += decoded;
    else
      out += entity;
    pos = end;
  }
  return out;
}

std::u32string fix_encoding(const std::u32string& text) {
  u32 current = text;
  while (true) {
    u32 next = fix_encoding_one_step(current);
    if (next == current) return current;
    current = std::move(next);
  }
}

std::u32string fix_text(const std::u32string& text) {
  constexpr size_t kMaxDecodeLength = 1000000;
  u32 out;
  bool unescape = true;  // "auto": switched off for good once a segment contains '<'
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find(U'\n', pos);
    end = end == u32::npos ? text.size() : end + 1;
    if (end - pos > kMaxDecodeLength) end = pos + kMaxDecodeLength;
    u32 segment = text.substr(pos, end - pos);
    if (segment.find(U'<') != u32::npos) unescape = false;
    out += fix_segment(std::move(segment), unescape);
    pos = end;
  }
  return out;
}

}  // namespace collage::ftfy
