# Turns a file into a C++ source that defines it as a byte array, so the
# binary carries it (the web page: no files to install next to the binary).
#   cmake -DINPUT=web/index.html -DOUTPUT=web_page.cc -DNAME=WebPageHtml -P embed_file.cmake
# defines `absl::string_view imagesearch::NAME()`.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_length)
math(EXPR size "${hex_length} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
string(REGEX REPLACE "(('\\\\x[0-9a-f][0-9a-f]',){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp" "// Generated from ${INPUT} by embed_file.cmake. Do not edit.
#include \"absl/strings/string_view.h\"

namespace imagesearch {
namespace {
constexpr char kBytes[] = {
${bytes}'\\0'};
}  // namespace

absl::string_view ${NAME}() { return absl::string_view(kBytes, ${size}); }

}  // namespace imagesearch
")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
