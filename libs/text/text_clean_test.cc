// Unit tests for the pieces of text_clean.h; expected values were taken from
// Python 3.11 (html.unescape, bytes.decode(errors="replace")) and from ftfy 6's
// documented behaviour.
#include "libs/text/text_clean.h"

#include <catch2/catch.hpp>
#include <string>

namespace imagesearch::text {
namespace {

std::string Unescape(const std::string& utf8) {
  return EncodeUtf8(HtmlUnescape(*DecodeUtf8(utf8)));
}
std::string Fix(const std::string& utf8) { return EncodeUtf8(FixTextSubset(*DecodeUtf8(utf8))); }
std::string Clean(const std::string& utf8) { return EncodeUtf8(*CleanClipText(*DecodeUtf8(utf8))); }

TEST_CASE("TextClean: DecodeUtf8 accepts well-formed UTF-8 and rejects the rest", "[text_clean]") {
  auto ok = DecodeUtf8("a\xC3\xA9\xE7\x8C\xAB\xF0\x9F\x98\x80");
  REQUIRE(ok.ok());
  CHECK(*ok == std::u32string{U'a', 0xE9, 0x732B, 0x1F600});
  CHECK(EncodeUtf8(*ok) == "a\xC3\xA9\xE7\x8C\xAB\xF0\x9F\x98\x80");
  for (const char* bad : {"\xC0\x80", "\xC1\xBF", "\xE0\x80\xAF", "\xED\xA0\x80",
                          "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xE4\xB8", "\x80", "\xFF"}) {
    INFO(bad);
    CHECK_FALSE(DecodeUtf8(bad).ok());
  }
}

TEST_CASE("TextClean: DecodeUtf8Lossy replaces maximal ill-formed subparts like Python",
          "[text_clean]") {
  const std::string r = "\xEF\xBF\xBD";
  CHECK(DecodeUtf8Lossy("\xE4\xB8") == r);
  CHECK(DecodeUtf8Lossy("\xF0\x80\x80\x80") == r + r + r + r);
  CHECK(DecodeUtf8Lossy("a\xFF"
                        "b") == "a" + r + "b");
  CHECK(DecodeUtf8Lossy("\xED\xA0\x80") == r + r + r);
  CHECK(DecodeUtf8Lossy("\xF0\x9F\x98") == r);
  CHECK(DecodeUtf8Lossy("\xF0\x9F\x98\x80") == "\xF0\x9F\x98\x80");
  CHECK(DecodeUtf8Lossy("\xC3") == r);
  CHECK(DecodeUtf8Lossy("\xE0\x80\xAF") == r + r + r);
  CHECK(DecodeUtf8Lossy("\xC0\xAF") == r + r);
}

TEST_CASE("TextClean: HtmlUnescape is Python's html.unescape", "[text_clean]") {
  CHECK(Unescape("&amp;") == "&");
  CHECK(Unescape("&lt3") == "<3");
  CHECK(Unescape("&notit;") ==
        "\xC2\xAC"
        "it;");
  CHECK(Unescape("&#x41;") == "A");
  CHECK(Unescape("&#65") == "A");
  CHECK(Unescape("&#0;") == "\xEF\xBF\xBD");
  CHECK(Unescape("&#128;") == "\xE2\x82\xAC");
  CHECK(Unescape("&#xD800;") == "\xEF\xBF\xBD");
  CHECK(Unescape("&#1;").empty());
  CHECK(Unescape("&#x;") == "&#x;");
  CHECK(Unescape("&") == "&");
  CHECK(Unescape("&&amp;") == "&&");
  CHECK(Unescape("&ampamp;") == "&amp;");
  CHECK(Unescape("&AMP") == "&");
  CHECK(Unescape("&#59;") == ";");
  CHECK(Unescape("&#X1F600") == "\xF0\x9F\x98\x80");
  CHECK(Unescape("&unknownentity;") == "&unknownentity;");
  CHECK(Unescape("&#9999999999999999999999;") == "\xEF\xBF\xBD");
  CHECK(Unescape("a&b c") == "a&b c");
  CHECK(Unescape("&lt;&lt&gt") == "<<>");
  CHECK(Unescape("&NotNestedGreaterGreater;") == "\xE2\xAA\xA2\xCC\xB8");
  CHECK(Unescape("&amp\xC3\xA9") == "&\xC3\xA9");
  CHECK(Unescape("&" + std::string(40, 'a') + ";") == "&" + std::string(40, 'a') + ";");
}

TEST_CASE("TextClean: FixTextSubset does ftfy's character fixes", "[text_clean]") {
  CHECK(Fix("\xEF\xAC\x81ne") == "fine");                                     // ligature
  CHECK(Fix("\xE2\x80\x9Chi\xE2\x80\x9D it\xE2\x80\x99s") == "\"hi\" it's");  // curly quotes
  CHECK(Fix("\xEF\xBC\xA1\xE3\x80\x80\xEF\xBC\x91") == "A 1");                // fullwidth, U+3000
  CHECK(Fix("\x1B[31mred\x1B[0m") == "red");                                  // terminal escapes
  CHECK(Fix("e\xCC\x81") == "\xC3\xA9");                                      // NFC
  CHECK(Fix("a\r\nb\rc") == "a\nb\nc");                                       // line breaks
  CHECK(Fix("\xEF\xBB\xBF"
            "bom\x07") == "bom");                  // control chars
  CHECK(Fix("\xC2\x85") == "\xE2\x80\xA6");        // C1 as cp1252
  CHECK(Fix("&amp;amp;amp;") == "&");              // entities, to a fixed point
  CHECK(Fix("<p> &amp;amp;") == "<p> &amp;amp;");  // ... but not near a '<'
  CHECK(Fix("x &amp;amp;\n< &amp;amp;") == "x &\n< &amp;amp;");
}

TEST_CASE("TextClean: CleanClipText collapses whitespace and lower-cases", "[text_clean]") {
  CHECK(Clean("  Hello\t\tWORLD \xC2\xA0 ") == "hello world");
  CHECK(Clean("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3") ==
        "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82");  // final sigma
  CHECK(Clean("\xC4\xB0") == "i\xCC\x87");    // U+0130 lower-cases to two code points
  CHECK(Clean("\xD0\x9C\xD0\x9E\xD0\xA1") == "\xD0\xBC\xD0\xBE\xD1\x81");
  CHECK(Clean("").empty());
}

}  // namespace
}  // namespace imagesearch::text
