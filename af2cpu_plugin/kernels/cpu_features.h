// What the kernels need from the CPU, checked at run time, and the target
// attributes their functions carry. Each function is compiled for its own
// instruction set, so the library builds without -march and loads on any
// x86-64; the entry points check the CPU before taking a path.
//
// bf16 needs AVX-512 F/BW/VL/DQ with avx512_bf16 (Zen 4 and later, Cooper
// Lake, Sapphire Rapids); fp32 uses AVX-512 where present, else AVX2 with FMA
// (Zen 3, Haswell and later).
#pragma once

#include <cstdlib>

#define AF2CPU_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define AF2CPU_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define AF2CPU_AVX2 __attribute__((target("avx2,fma")))

namespace af2cpu {

inline bool has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

inline bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

inline bool has_avx512_bf16() {
  __builtin_cpu_init();
  return has_avx512() && __builtin_cpu_supports("avx512bf16");
}

// AF2CPU_FORCE_AVX2=1 runs the AVX2 fp32 path on an AVX-512 CPU (tests, and
// benchmarking what an AVX2-only machine would run).
inline bool force_avx2() {
  static const bool force = [] {
    const char* env = std::getenv("AF2CPU_FORCE_AVX2");
    return env != nullptr && env[0] == '1';
  }();
  return force;
}

}  // namespace af2cpu
