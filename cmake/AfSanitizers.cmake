# With AF_SANITIZE=ON every target (ours and generated) is built with
# AddressSanitizer (LeakSanitizer included) and UndefinedBehaviorSanitizer.
if(AF_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

# With AF_FUZZ=ON (clang only) everything is instrumented for libFuzzer as
# well; the harnesses in tests/fuzz link -fsanitize=fuzzer themselves.
option(AF_FUZZ "Build the libFuzzer harnesses (needs clang)" OFF)
if(AF_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "AF_FUZZ needs clang: CC=clang cmake ...")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                      -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
