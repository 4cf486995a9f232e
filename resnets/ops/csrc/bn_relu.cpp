// Fused BatchNorm (training) + ReLU, optionally with the residual addition before the ReLU,
// forward and backward, for CPU tensors in channels_last (NHWC) layout.
//
// Why: in a CIFAR ResNet step on a 2-core CPU the convolutions run near oneDNN's peak, while
// BN, ReLU and the residual add are memory-bound passes over small activations, several
// passes each in ATen (docs/performance.md). Fused, a BN+ReLU layer reads its input twice
// and writes its output once in the forward, and reads input and gradient twice and writes
// the input gradient once in the backward.
//
// Semantics are those of F.batch_norm(training=True) followed by relu: batch mean and biased
// variance normalise; the running statistics take the unbiased variance (n / (n - 1)).
// Activations are bf16 or fp32; weight, bias, running statistics and the saved mean/invstd are
// fp32, as under CPU bf16 autocast. Sums run in fp32 over blocks of rows, blocks add in fp64,
// and the statistics are taken around a per-channel shift (the first row) so that
// E[x^2] - E[x]^2 does not cancel. The reduction order depends on the shape only, never on the
// thread count, so results are reproducible.
//
// Compiled per host at first use (resnets/ops/fused_bn_relu.py) with the instruction set
// ATen reports for this CPU (CPU_CAPABILITY_AVX512 / AVX2 / none), which selects the width of
// at::vec::Vectorized.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "vec_io.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

namespace {

using at::Tensor;
using resnets_vec::load;
using resnets_vec::store;
using resnets_vec::Vec;
using resnets_vec::VF;
// Rows are split into chunks of about this many elements, and at least kChunkMinRows rows (so
// that wide layers do not spend their time adding up per-chunk partial sums); each chunk is
// one parallel task with its own partial sums (fixed by the shape, so the result is
// thread-count independent).
constexpr int64_t kChunkElems = 1 << 15;
constexpr int64_t kChunkMinRows = 128;
// Within a chunk, fp32 vector sums run over at most this many rows before adding into fp64.
constexpr int64_t kBlockRows = 256;

// The normalisation as y = x * scale + offset, from the fp32 mean and invstd. The backward
// recomputes the ReLU mask with these same values, so it is the forward's mask exactly.
inline void affine(float w, float b, float mean, float invstd, float& scale, float& offset) {
  scale = static_cast<float>(static_cast<double>(w) * invstd);
  offset = static_cast<float>(b - static_cast<double>(mean) * w * invstd);
}

struct Layout {
  int64_t rows, channels, rows_per_chunk, chunks;
};

Layout layout_of(const Tensor& x) {
  const int64_t c = x.size(1);
  const int64_t rows = x.numel() / c;
  const int64_t rpc = std::max<int64_t>(kChunkMinRows, kChunkElems / c);
  return {rows, c, rpc, (rows + rpc - 1) / rpc};
}

// The vector path handles C = NB * VF channels per row as NB vectors. NB is a compile-time
// constant for the common widths (the vectors stay in registers) or kAnyBlocks: any multiple of
// VF, the count read from the layout. NB = 0 is the scalar path, for any other channel count.
constexpr int kAnyBlocks = -1;

template <int NB>
inline int64_t blocks(const Layout& l) {
  return NB > 0 ? NB : l.channels / VF;
}

// One vector per channel block.
template <int NB>
struct Vecs {
  std::array<Vec, (NB > 0 ? NB : 1)> v;
  explicit Vecs(int64_t) {}
  Vec& operator[](int64_t b) { return v[b]; }
  const Vec& operator[](int64_t b) const { return v[b]; }
};
template <>
struct Vecs<kAnyBlocks> {
  std::vector<Vec> v;
  explicit Vecs(int64_t nb) : v(nb) {}
  Vec& operator[](int64_t b) { return v[b]; }
  const Vec& operator[](int64_t b) const { return v[b]; }
};

// The vectors of a per-channel fp32 array.
template <int NB>
Vecs<NB> coef(const Layout& l, const float* p) {
  Vecs<NB> out(blocks<NB>(l));
  for (int64_t b = 0; b < blocks<NB>(l); ++b) out[b] = Vec::loadu(p + b * VF);
  return out;
}

// Adds, per channel, sum(a) and sum(b) over rows [r0, r1) into s1, s2 (fp64), where a and b
// are per-element values produced by `f(row, channel_block) -> pair<Vec, Vec>` (vector path)
// or `g(row, channel) -> pair<float, float>` (scalar path).
template <int NB, typename F>
void sum_rows_vec(const Layout& l, int64_t r0, int64_t r1, double* s1, double* s2, const F& f) {
  const int64_t nb = blocks<NB>(l);
  for (int64_t rb = r0; rb < r1; rb += kBlockRows) {
    const int64_t re = std::min(r1, rb + kBlockRows);
    // Two row streams: independent add chains, so the loop runs at load speed.
    Vecs<NB> a1[2] = {Vecs<NB>(nb), Vecs<NB>(nb)}, a2[2] = {Vecs<NB>(nb), Vecs<NB>(nb)};
    for (int u = 0; u < 2; ++u)
      for (int64_t b = 0; b < nb; ++b) a1[u][b] = a2[u][b] = Vec(0.f);
    int64_t r = rb;
    for (; r + 1 < re; r += 2) {
      for (int u = 0; u < 2; ++u)
        for (int64_t b = 0; b < nb; ++b) {
          auto v = f(r + u, b);
          a1[u][b] = a1[u][b] + v.first;
          a2[u][b] = a2[u][b] + v.second;
        }
    }
    if (r < re)
      for (int64_t b = 0; b < nb; ++b) {
        auto v = f(r, b);
        a1[0][b] = a1[0][b] + v.first;
        a2[0][b] = a2[0][b] + v.second;
      }
    for (int64_t b = 0; b < nb; ++b) {
      float t1[VF], t2[VF];
      (a1[0][b] + a1[1][b]).store(t1);
      (a2[0][b] + a2[1][b]).store(t2);
      for (int64_t i = 0; i < VF; ++i) {
        s1[b * VF + i] += t1[i];
        s2[b * VF + i] += t2[i];
      }
    }
  }
}

template <typename G>
void sum_rows_scalar(const Layout& l, int64_t r0, int64_t r1, double* s1, double* s2, const G& g) {
  const int64_t c = l.channels;
  std::vector<float> a1(c), a2(c);
  for (int64_t rb = r0; rb < r1; rb += kBlockRows) {
    const int64_t re = std::min(r1, rb + kBlockRows);
    std::fill(a1.begin(), a1.end(), 0.f);
    std::fill(a2.begin(), a2.end(), 0.f);
    for (int64_t r = rb; r < re; ++r)
      for (int64_t k = 0; k < c; ++k) {
        auto v = g(r, k);
        a1[k] += v.first;
        a2[k] += v.second;
      }
    for (int64_t k = 0; k < c; ++k) {
      s1[k] += a1[k];
      s2[k] += a2[k];
    }
  }
}

// Per-channel sums over all rows: parallel over chunks, then the chunks added in order.
template <int NB, typename F, typename G>
void channel_sums(const Layout& l, std::vector<double>& s1, std::vector<double>& s2, const F& f, const G& g) {
  const int64_t c = l.channels;
  std::vector<double> p1(l.chunks * c, 0.0), p2(l.chunks * c, 0.0);
  at::parallel_for(0, l.chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t r0 = k * l.rows_per_chunk, r1 = std::min(l.rows, r0 + l.rows_per_chunk);
      if constexpr (NB != 0)
        sum_rows_vec<NB>(l, r0, r1, &p1[k * c], &p2[k * c], f);
      else
        sum_rows_scalar(l, r0, r1, &p1[k * c], &p2[k * c], g);
    }
  });
  s1.assign(c, 0.0);
  s2.assign(c, 0.0);
  for (int64_t k = 0; k < l.chunks; ++k)
    for (int64_t i = 0; i < c; ++i) {
      s1[i] += p1[k * c + i];
      s2[i] += p2[k * c + i];
    }
}

// Runs `f(row, channel_block)` (vector) or `g(row, channel)` (scalar) over every element, in parallel.
template <int NB, typename F, typename G>
void for_each_row(const Layout& l, const F& f, const G& g) {
  const int64_t nb = blocks<NB>(l);
  at::parallel_for(0, l.rows, l.rows_per_chunk, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if constexpr (NB != 0) {
        for (int64_t b = 0; b < nb; ++b) f(r, b);
      } else {
        for (int64_t k = 0; k < l.channels; ++k) g(r, k);
      }
    }
  });
}

template <typename T, int NB>
void forward_impl(const Tensor& x, const Tensor& residual, Tensor& y, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, double momentum, double eps,
                  Tensor& mean_out, Tensor& invstd_out) {
  const Layout l = layout_of(x);
  const int64_t c = l.channels;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const T* rp = residual.defined() ? residual.data_ptr<T>() : nullptr;

  // Statistics around a shift (the first row): sums of d = x - shift and of d^2.
  std::vector<float> shift(c);
  for (int64_t k = 0; k < c; ++k) shift[k] = static_cast<float>(xp[k]);
  const auto sv = coef<NB>(l, shift.data());
  std::vector<double> s1, s2;
  channel_sums<NB>(
      l, s1, s2,
      [&](int64_t r, int64_t b) {
        Vec d = load(xp + r * c + b * VF) - sv[b];
        return std::make_pair(d, d * d);
      },
      [&](int64_t r, int64_t k) {
        float d = static_cast<float>(xp[r * c + k]) - shift[k];
        return std::make_pair(d, d * d);
      });

  const double n = static_cast<double>(l.rows);
  float* mp = mean_out.data_ptr<float>();
  float* ip = invstd_out.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  std::vector<float> scale(c), offset(c);
  for (int64_t k = 0; k < c; ++k) {
    const double m1 = s1[k] / n;
    const double var = std::max(0.0, s2[k] / n - m1 * m1);  // biased: normalises the batch
    const double mean = shift[k] + m1;
    const double invstd = 1.0 / std::sqrt(var + eps);
    mp[k] = static_cast<float>(mean);
    ip[k] = static_cast<float>(invstd);
    affine(wp[k], bp[k], mp[k], ip[k], scale[k], offset[k]);
    if (running_mean.defined()) {
      float* rm = running_mean.data_ptr<float>();
      float* rv = running_var.data_ptr<float>();
      const double unbiased = l.rows > 1 ? var * n / (n - 1) : var;
      rm[k] = static_cast<float>((1 - momentum) * rm[k] + momentum * mean);
      rv[k] = static_cast<float>((1 - momentum) * rv[k] + momentum * unbiased);
    }
  }

  const auto a = coef<NB>(l, scale.data()), o = coef<NB>(l, offset.data());
  const Vec zero(0.f);
  if (rp) {
    for_each_row<NB>(
        l,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          store(yp + i, at::vec::maximum(at::vec::fmadd(load(xp + i), a[b], o[b]) + load(rp + i), zero));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          float v = std::fma(static_cast<float>(xp[i]), scale[k], offset[k]) + static_cast<float>(rp[i]);
          yp[i] = static_cast<T>(v > 0.f ? v : 0.f);
        });
  } else {
    for_each_row<NB>(
        l,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          store(yp + i, at::vec::maximum(at::vec::fmadd(load(xp + i), a[b], o[b]), zero));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          float v = std::fma(static_cast<float>(xp[i]), scale[k], offset[k]);
          yp[i] = static_cast<T>(v > 0.f ? v : 0.f);
        });
  }
}

// Backward. Without the residual, the ReLU mask is recomputed from x exactly as the forward
// computed it (same fused multiply-add), so only x is saved. With the residual the mask comes
// from the saved output y, and the masked gradient is also the residual's gradient.
template <typename T, int NB>
void backward_impl(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& weight, const Tensor& bias,
                   const Tensor& mean, const Tensor& invstd, Tensor& grad_x, Tensor& grad_residual,
                   Tensor& grad_weight, Tensor& grad_bias) {
  const Layout l = layout_of(x);
  const int64_t c = l.channels;
  const T* gp = grad.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* yp = y.defined() ? y.data_ptr<T>() : nullptr;
  T* dxp = grad_x.data_ptr<T>();
  T* drp = grad_residual.defined() ? grad_residual.data_ptr<T>() : nullptr;
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();

  std::vector<float> scale(c), offset(c);
  for (int64_t k = 0; k < c; ++k) affine(wp[k], bp[k], mp[k], ip[k], scale[k], offset[k]);
  const auto a = coef<NB>(l, scale.data()), o = coef<NB>(l, offset.data()), mv = coef<NB>(l, mp);
  const Vec zero(0.f);

  // Pass 1: sum(gm) and sum(gm * (x - mean)), gm = grad where the ReLU let the value through.
  // With the residual, gm is written out here: it is the residual's gradient and pass 2 reads it.
  std::vector<double> sg, sgx;
  if (drp) {
    channel_sums<NB>(
        l, sg, sgx,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          Vec gm = Vec::blendv(zero, load(gp + i), load(yp + i) > zero);
          store(drp + i, gm);
          gm = load(drp + i);  // the rounded value, as pass 2 sees it
          return std::make_pair(gm, gm * (load(xp + i) - mv[b]));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          T gm = static_cast<float>(yp[i]) > 0.f ? gp[i] : static_cast<T>(0.f);
          drp[i] = gm;
          float g = static_cast<float>(gm);
          return std::make_pair(g, g * (static_cast<float>(xp[i]) - mp[k]));
        });
  } else {
    channel_sums<NB>(
        l, sg, sgx,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          Vec xv = load(xp + i);
          Vec gm = Vec::blendv(zero, load(gp + i), at::vec::fmadd(xv, a[b], o[b]) > zero);
          return std::make_pair(gm, gm * (xv - mv[b]));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          float xv = static_cast<float>(xp[i]);
          float g = std::fma(xv, scale[k], offset[k]) > 0.f ? static_cast<float>(gp[i]) : 0.f;
          return std::make_pair(g, g * (xv - mp[k]));
        });
  }

  // dx = w * invstd * (gm - mean(gm) - xhat * mean(gm * xhat)) = kg * gm + kx * x + k0.
  const double n = static_cast<double>(l.rows);
  float* dwp = grad_weight.data_ptr<float>();
  float* dbp = grad_bias.data_ptr<float>();
  std::vector<float> kg(c), kx(c), k0(c);
  for (int64_t k = 0; k < c; ++k) {
    const double is = ip[k];
    dbp[k] = static_cast<float>(sg[k]);
    dwp[k] = static_cast<float>(sgx[k] * is);
    const double kk = wp[k] * is;
    const double px = -kk * is * is * sgx[k] / n;
    kg[k] = static_cast<float>(kk);
    kx[k] = static_cast<float>(px);
    k0[k] = static_cast<float>(-kk * sg[k] / n - px * mp[k]);
  }
  const auto cg = coef<NB>(l, kg.data()), cx = coef<NB>(l, kx.data()), c0 = coef<NB>(l, k0.data());
  if (drp) {
    for_each_row<NB>(
        l,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          store(dxp + i, at::vec::fmadd(load(drp + i), cg[b], at::vec::fmadd(load(xp + i), cx[b], c0[b])));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          dxp[i] = static_cast<T>(static_cast<float>(drp[i]) * kg[k] + (static_cast<float>(xp[i]) * kx[k] + k0[k]));
        });
  } else {
    for_each_row<NB>(
        l,
        [&](int64_t r, int64_t b) {
          const int64_t i = r * c + b * VF;
          Vec xv = load(xp + i);
          Vec gm = Vec::blendv(zero, load(gp + i), at::vec::fmadd(xv, a[b], o[b]) > zero);
          store(dxp + i, at::vec::fmadd(gm, cg[b], at::vec::fmadd(xv, cx[b], c0[b])));
        },
        [&](int64_t r, int64_t k) {
          const int64_t i = r * c + k;
          float xv = static_cast<float>(xp[i]);
          float g = std::fma(xv, scale[k], offset[k]) > 0.f ? static_cast<float>(gp[i]) : 0.f;
          dxp[i] = static_cast<T>(g * kg[k] + (xv * kx[k] + k0[k]));
        });
  }
}

// Calls `f.template operator()<T, NB>()` for the activation dtype and the channel blocks.
template <typename F>
void dispatch(const Tensor& x, const F& f) {
  const int64_t c = x.size(1);
  const int64_t nb = c % VF == 0 ? c / VF : 0;  // 0: the scalar path
  auto by_width = [&](auto tag) {
    using T = decltype(tag);
    switch (nb) {
      case 1: return f.template operator()<T, 1>();
      case 2: return f.template operator()<T, 2>();
      case 4: return f.template operator()<T, 4>();
      case 8: return f.template operator()<T, 8>();
      case 0: return f.template operator()<T, 0>();
      default: return f.template operator()<T, kAnyBlocks>();
    }
  };
  if (x.scalar_type() == at::kBFloat16)
    by_width(c10::BFloat16());
  else
    by_width(float());
}

void check_inputs(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "fused_bn_relu: expected a 4-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "fused_bn_relu: activations must be bfloat16 or float32");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "fused_bn_relu: expected channels_last");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && bias.is_contiguous() && weight.numel() == x.size(1) &&
                  bias.numel() == x.size(1),
              "fused_bn_relu: weight and bias must be contiguous float32 of size C");
}

// Returns (y, mean, invstd); updates running_mean/running_var in place when given.
std::vector<Tensor> forward(const Tensor& x, const c10::optional<Tensor>& residual, const Tensor& weight,
                            const Tensor& bias, const c10::optional<Tensor>& running_mean,
                            const c10::optional<Tensor>& running_var, double momentum, double eps) {
  check_inputs(x, weight, bias);
  Tensor r = residual.has_value() ? residual->contiguous(at::MemoryFormat::ChannelsLast) : Tensor();
  TORCH_CHECK(!r.defined() || (r.sizes() == x.sizes() && r.scalar_type() == x.scalar_type()),
              "fused_bn_relu: residual must match the input's shape and dtype");
  Tensor rm = running_mean.has_value() ? *running_mean : Tensor();
  Tensor rv = running_var.has_value() ? *running_var : Tensor();
  TORCH_CHECK(rm.defined() == rv.defined(), "fused_bn_relu: give both running statistics or neither");
  TORCH_CHECK(!rm.defined() || (rm.scalar_type() == at::kFloat && rv.scalar_type() == at::kFloat &&
                                rm.is_contiguous() && rv.is_contiguous()),
              "fused_bn_relu: running statistics must be contiguous float32");
  Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  Tensor mean = at::empty({x.size(1)}, weight.options());
  Tensor invstd = at::empty({x.size(1)}, weight.options());
  dispatch(x, [&]<typename T, int NB>() {
    forward_impl<T, NB>(x, r, y, weight, bias, rm, rv, momentum, eps, mean, invstd);
  });
  return {y, mean, invstd};
}

// Returns (grad_x, grad_residual or undefined, grad_weight, grad_bias). `y` is the forward's
// output when the forward had a residual, else undefined.
std::vector<Tensor> backward(const Tensor& grad, const Tensor& x, const c10::optional<Tensor>& y,
                             const Tensor& weight, const Tensor& bias, const Tensor& mean, const Tensor& invstd) {
  check_inputs(x, weight, bias);
  Tensor g = grad.contiguous(at::MemoryFormat::ChannelsLast);
  if (g.scalar_type() != x.scalar_type()) g = g.to(x.scalar_type());
  Tensor out = y.has_value() ? *y : Tensor();
  Tensor grad_x = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  Tensor grad_r = out.defined() ? at::empty_like(x, at::MemoryFormat::ChannelsLast) : Tensor();
  Tensor grad_w = at::empty_like(weight);
  Tensor grad_b = at::empty_like(bias);
  dispatch(x, [&]<typename T, int NB>() {
    backward_impl<T, NB>(g, x, out, weight, bias, mean, invstd, grad_x, grad_r, grad_w, grad_b);
  });
  return {grad_x, grad_r, grad_w, grad_b};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused BatchNorm (training) [+ residual] + ReLU, forward");
  m.def("backward", &backward, "fused BatchNorm (training) [+ residual] + ReLU, backward");
  m.attr("vector_width") = VF;
}
