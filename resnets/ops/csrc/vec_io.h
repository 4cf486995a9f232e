// What both CPU kernels (bn_relu.cpp, detection_ops.cpp) share: fp32 vectors of the width ATen
// was built for here, loaded from and stored to fp32 or bf16 memory. bf16 activations are what
// CPU autocast produces; every sum in the kernels runs in fp32 (or wider).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace resnets_vec {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t VF = Vec::size();

inline Vec load(const float* p) { return Vec::loadu(p); }
inline Vec load(const c10::BFloat16* p) {
  Vec v;
  at::vec::load_fp32_from_bf16(p, v);
  return v;
}
inline void store(float* p, const Vec& v) { v.store(p); }
inline void store(c10::BFloat16* p, const Vec& v) { at::vec::convert_float_bfloat16(v, v).store(p, VF); }

}  // namespace resnets_vec
