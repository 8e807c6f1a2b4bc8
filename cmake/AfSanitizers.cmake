# With AF_SANITIZE=ON every target (ours and generated) is built with
# AddressSanitizer (LeakSanitizer included) and UndefinedBehaviorSanitizer.
if(AF_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
