# -DLTRAIN_CUDA_EMU=ON: the kernels (kernels/*.cu) and the CUDA backend (src/cuda/) compiled as
# host C++ with the C++ compiler, against the CUDA emulator in this folder instead of nvcc,
# cudart, cuBLASLt and NCCL. Included from the top-level CMakeLists.txt. Test infrastructure: the
# emulator runs the real kernel sources on the CPU to check them; it is never a product path.
#
# Only NVIDIA's headers are used (for the types and the API's signatures), from the CUDA toolkit
# at /usr/local/cuda (or CUDAToolkit_ROOT); no CUDA library is linked.
enable_language(ASM)
find_path(LTRAIN_CUDA_INCLUDE_DIR cuda_runtime.h
  HINTS ${CUDAToolkit_ROOT}/include /usr/local/cuda/include ENV CUDA_HOME PATH_SUFFIXES include)
if(NOT LTRAIN_CUDA_INCLUDE_DIR OR NOT EXISTS ${LTRAIN_CUDA_INCLUDE_DIR}/cublasLt.h)
  message(FATAL_ERROR "LTRAIN_CUDA_EMU=ON needs the CUDA toolkit's headers (cuda_runtime.h, cuda_bf16.h, "
                      "cublasLt.h), looked for in /usr/local/cuda/include; set CUDAToolkit_ROOT")
endif()
set(LTRAIN_EMU_DIR ${CMAKE_SOURCE_DIR}/tests/cuda_emu)

# The emulator: runtime, cuBLASLt subset, scheduler and checks, fiber switch.
add_library(ltrain_cuda_emu STATIC
  ${LTRAIN_EMU_DIR}/emu_core.cpp ${LTRAIN_EMU_DIR}/runtime.cpp ${LTRAIN_EMU_DIR}/cublaslt_emu.cpp
  ${LTRAIN_EMU_DIR}/switch_x86_64.S)
target_include_directories(ltrain_cuda_emu PUBLIC ${LTRAIN_CUDA_INCLUDE_DIR} ${LTRAIN_EMU_DIR})
target_compile_definitions(ltrain_cuda_emu PUBLIC LTRAIN_CUDA_EMU=1)
target_compile_options(ltrain_cuda_emu PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter ${LTRAIN_SANITIZE_FLAGS}>)
# The scheduler and the per-access checks are the emulator's inner loop, and the code that runs
# on the fibers' stacks: no sanitizer instrumentation there (its own checks are exact; ASan covers
# the runtime, the cuBLASLt subset and everything on the host side).
set_source_files_properties(${LTRAIN_EMU_DIR}/emu_core.cpp PROPERTIES COMPILE_OPTIONS "-fno-sanitize=all;-mpopcnt")
target_link_libraries(ltrain_cuda_emu PUBLIC ${CMAKE_DL_LIBS})

# Compile options of a kernel source under the emulator: C++, the emulator's kernel header first,
# and g++'s -fsanitize=thread instrumentation, whose per-access hooks the emulator defines (the
# access checks and the race detector; no libtsan is linked). -fno-tree-sra keeps 16-byte vector
# accesses whole, so their alignment is checked as one access.
# -g1: line tables, so that reports name the kernel's file and line. -fno-strict-aliasing: CUDA
# code reinterprets registers (bf16x2 as uint32_t) as nvcc allows; g++ must not optimize on it.
# -Wno-unknown-pragmas: #pragma unroll is nvcc's.
set(LTRAIN_EMU_KERNEL_FLAGS -x c++ -include ${LTRAIN_EMU_DIR}/emu.h -fsanitize=thread -fno-tree-sra -g1
  -fno-strict-aliasing -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas)
if(LTRAIN_SANITIZE)
  # UBSan's alignment check would abort the process before the emulator can name the kernel,
  # block and thread of a misaligned access; the emulator checks alignment itself.
  list(APPEND LTRAIN_EMU_KERNEL_FLAGS -fsanitize=undefined -fno-sanitize=alignment
       -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
endif()

file(GLOB_RECURSE LTRAIN_KERNELS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/kernels/*.cu)
set_source_files_properties(${LTRAIN_KERNELS} PROPERTIES LANGUAGE CXX)
add_library(ltrain_cuda STATIC ${LTRAIN_KERNELS})
target_include_directories(ltrain_cuda PUBLIC ${CMAKE_SOURCE_DIR}/include ${CMAKE_SOURCE_DIR}/kernels)
target_compile_options(ltrain_cuda PRIVATE ${LTRAIN_EMU_KERNEL_FLAGS})
target_link_libraries(ltrain_cuda PUBLIC ltrain_cuda_emu)
# The kernels report errors through ltrain::fatal_error (ltrain_base): for the link line only, so
# that no compile option of the library's (-fsanitize=address) reaches the kernel sources.
set_property(TARGET ltrain_cuda APPEND PROPERTY INTERFACE_LINK_LIBRARIES ltrain_base)
target_link_libraries(ltrain_core PUBLIC ltrain_cuda)
target_compile_definitions(ltrain_core PUBLIC LTRAIN_WITH_CUDA=1)
set(LTRAIN_HAVE_CUDA ON)
message(STATUS "ltrain: CUDA backend on the CUDA emulator (tests/cuda_emu), headers ${LTRAIN_CUDA_INCLUDE_DIR}")
