# af_warnings(target): the house warning set on our own code.
# Generated code (protobuf-c, nanopb) never gets this function.
function(af_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes
    -Wmissing-prototypes -Wformat=2 -Wconversion)
  if(AF_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
