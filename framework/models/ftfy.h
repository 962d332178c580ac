// Text cleaning of transformers' slow CLIPTokenizer when ftfy is installed: a reimplementation of
// ftfy 6.1.1 `fix_text` with its default TextFixerConfig (private to framework/models; exposed for tests).
// Text is UTF-32 (a Python str).
#pragma once

#include <string>

namespace collage::ftfy {

// ftfy.fix_text(text): line by line, repeats until stable: HTML entities (unless the text holds a '<'),
// mojibake repair, C1 controls, Latin ligatures, character width, curly quotes, line breaks, terminal
// escapes, control characters, NFC.
std::u32string fix_text(const std::u32string& text);

// The individual steps, as ftfy names them.
std::u32string unescape_html(const std::u32string& text);
std::u32string fix_encoding(const std::u32string& text);
bool is_bad(const std::u32string& text);  // ftfy.badness.is_bad: looks like mojibake

}  // namespace collage::ftfy
