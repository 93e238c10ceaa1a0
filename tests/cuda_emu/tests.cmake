# Tests of the emulator build (-DLTRAIN_CUDA_EMU=ON), included from tests/CMakeLists.txt: every
# GPU test of the project, run on the CPU through the CUDA emulator, and the emulator's own tests.
# All carry the ctest label "emu". The production-size cases (gtest name *.ProductionSizes), which
# would take minutes each on the CPU, are left out here; in the nvcc build they carry the ctest
# label "gpu-only", and scripts/gpu_check.sh runs them on a device.
# The op tests (tests/ops/test_*.cpp, LTRAIN_OP_TESTS) are built in tests/CMakeLists.txt; here they
# run their GPU cases (suites Cuda*) only: their CPU cases use no kernel and run in the product
# build.
set(LTRAIN_EMU_GPU_TESTS test_cuda_model test_deterministic test_memory_plan test_bench)
foreach(name ${LTRAIN_EMU_GPU_TESTS})
  ltrain_test_executable(${name})
endforeach()

# Each GPU test binary under two thread schedules: round-robin, and seeded random (whose order
# changes from launch to launch, so the bitwise-determinism tests also catch schedule-dependent
# results). The random run of the op tests also checks global memory for races, between blocks
# and between the threads of a block.
set(LTRAIN_EMU_ENV "ASAN_OPTIONS=detect_leaks=0" "OMP_NUM_THREADS=1")
# The environment of discovered tests: gtest_discover_tests passes PROPERTIES on as separate
# words, so an ENVIRONMENT list given there keeps its first entry only. Instead, a file that ctest
# reads after the discovered tests sets each one's ENVIRONMENT as one list.
function(ltrain_emu_test_environment list_var env)
  set(file ${CMAKE_CURRENT_BINARY_DIR}/${list_var}_env.cmake)
  file(WRITE ${file} "foreach(t IN LISTS ${list_var})\n  set_tests_properties(\"\${t}\" PROPERTIES ENVIRONMENT \"${env}\")\nendforeach()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${file})
endfunction()
function(ltrain_emu_discover name schedule_prefix schedule env)
  set(filter "-*.ProductionSizes")
  if(name IN_LIST LTRAIN_OP_TESTS)
    set(filter "Cuda*${filter}")
  endif()
  gtest_discover_tests(${name} TEST_PREFIX "emu.${schedule_prefix}." TEST_FILTER "${filter}" DISCOVERY_TIMEOUT 120
    TEST_LIST ${name}_${schedule_prefix}_TESTS PROPERTIES TIMEOUT 900 LABELS emu
    WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  ltrain_emu_test_environment(${name}_${schedule_prefix}_TESTS "${LTRAIN_EMU_ENV};LTRAIN_EMU_SCHEDULE=${schedule}${env}")
endfunction()
foreach(name ${LTRAIN_OP_TESTS} ${LTRAIN_EMU_GPU_TESTS})
  ltrain_emu_discover(${name} rr round-robin "")
endforeach()
foreach(name ${LTRAIN_OP_TESTS})
  ltrain_emu_discover(${name} random random:7 ";LTRAIN_EMU_GLOBAL_RACES=1")
endforeach()
foreach(name test_deterministic test_cuda_model)
  ltrain_emu_discover(${name} random random:7 "")
endforeach()

# The emulator's own tests. Sources with kernels are compiled like kernels/*.cu (emu.h first, the
# access hooks on); test_mma_selftest.cu also runs on a real GPU in the nvcc build
# (tests/CMakeLists.txt).
function(ltrain_emu_own_test name source kernel_source)
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/${source})
  if(kernel_source)
    set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/${source} PROPERTIES LANGUAGE CXX)
    target_compile_options(${name} PRIVATE ${LTRAIN_EMU_KERNEL_FLAGS})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
  else()
    target_compile_options(${name} PRIVATE ${LTRAIN_SANITIZE_FLAGS})
  endif()
  target_link_libraries(${name} PRIVATE ltrain_cuda_emu GTest::gtest_main)
  gtest_discover_tests(${name} TEST_PREFIX "emu." DISCOVERY_TIMEOUT 120 TEST_LIST ${name}_TESTS
    PROPERTIES TIMEOUT 300 LABELS emu)
  ltrain_emu_test_environment(${name}_TESTS "${LTRAIN_EMU_ENV}")
endfunction()
ltrain_emu_own_test(test_emu test_emu.cpp ON)
ltrain_emu_own_test(test_mma_selftest test_mma_selftest.cu ON)
ltrain_emu_own_test(test_cublaslt_emu test_cublaslt_emu.cpp OFF)

# `ltrain train device=cuda` end to end under the emulator: losses against the CPU backend, and a
# checkpoint saved on the "GPU" resumed on the CPU and back.
add_test(NAME emu.train_cli COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/test_emu_train.sh
  $<TARGET_FILE:ltrain> ${CMAKE_CURRENT_BINARY_DIR}/emu_train.work)
set_tests_properties(emu.train_cli PROPERTIES TIMEOUT 900 LABELS emu ENVIRONMENT "${LTRAIN_EMU_ENV}")

# Work counts (tests/cuda_emu/work_*.cpp, one executable each, test_work_*): what the emulator
# counted (tensor-core products, global bytes read and written, host synchronizations) against
# the minimum the algorithm needs. Speed by design, proven without a GPU.
file(GLOB LTRAIN_EMU_WORK_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu/work_*.cpp)
foreach(src ${LTRAIN_EMU_WORK_SOURCES})
  get_filename_component(stem ${src} NAME_WE)
  set(name test_${stem})
  add_executable(${name} ${src} ${CMAKE_CURRENT_SOURCE_DIR}/test_util.cpp)
  target_link_libraries(${name} PRIVATE ltrain_core GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR}
    ${CMAKE_CURRENT_SOURCE_DIR}/cuda_emu)
  target_compile_definitions(${name} PRIVATE LTRAIN_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data"
    LTRAIN_BINARY="$<TARGET_FILE:ltrain>")
  gtest_discover_tests(${name} TEST_PREFIX "emu.work." DISCOVERY_TIMEOUT 120 TEST_LIST ${name}_TESTS
    PROPERTIES TIMEOUT 600 LABELS emu WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
  ltrain_emu_test_environment(${name}_TESTS "${LTRAIN_EMU_ENV}")
endforeach()
