// RoI Align and RoI max pooling (forward and backward) on channels-last features, and greedy
// NMS, for the CPU.
//
// Why: in the C4 detector's training step RoI Align / RoI pooling (512 RoIs, 14x14 bins,
// C=1024) and the proposal NMS (12,000 boxes) are not convolutions, yet in pure PyTorch they
// took about half of the step, RoI pooling more than the whole rest of it (issue 24,
// benchmarks/bench_detection.py). Here they are plain loops:
//
// - RoI Align follows torchvision's CPU kernel (roi_align_kernel.cpp) sample by sample: each
//   bin averages grid_h x grid_w bilinear samples, samples more than one pixel outside the map
//   contribute 0, nearer ones are clamped to the border. The bilinear taps (pixel, weight) of
//   every bin are computed once, then the forward sums weighted feature rows of C contiguous
//   channels per bin (parallel over bins), and the backward adds the weighted gradient rows
//   into the feature gradient (parallel over blocks of channels, so no two threads write the
//   same element and the sum order is fixed: results do not depend on the thread count).
// - RoI max pooling follows torchvision's CPU kernel (roi_pool_kernel.cpp): each bin is a
//   rounded cell range whose maximum is taken over C contiguous channels (parallel over bins);
//   the backward finds each bin's argmax again from the saved input, with torchvision's
//   tie rule, and adds the gradient there (parallel over channel blocks, as RoI Align's).
//   Recomputing the argmax instead of storing it saves an int32 tensor as large as the
//   output (411 MB at 512 RoIs x 14 x 14 x 1024).
// - Features are fp32 or bf16 (what CPU bf16 autocast produces); sums and comparisons run in fp32.
// - NMS is torchvision's greedy sweep over boxes sorted by decreasing score, with IoU computed
//   as torchvision does (inter / (area_i + area_j - inter)), optionally only between boxes of
//   the same category (batched NMS), stopping after max_output kept boxes.
//
// Compiled per host at first use (resnets/ops/detection_kernels.py), like bn_relu.cpp.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "vec_io.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

namespace {

using at::Tensor;
using resnets_vec::load;
using resnets_vec::store;
using resnets_vec::Vec;
using resnets_vec::VF;

// Channels per backward task: a block of channels is one task, so writes never collide.
constexpr int64_t kChannelBlock = 128;

// The taps live in tensors: the forward returns them and the backward takes them back, so
// they are computed once per step (about 10 ms for 512 RoIs at 14x14).
struct Taps {
  Tensor bin_start_t, pixel_t, weight_t;
  int64_t* bin_start;  // [bins + 1] offsets into pixel/weight
  int64_t* pixel;      // row of the channels-last feature map [N * H * W, C]
  float* weight;       // bilinear weight / count
};

Taps taps_of(Tensor bin_start, Tensor pixel, Tensor weight) {
  TORCH_CHECK(bin_start.scalar_type() == at::kLong && pixel.scalar_type() == at::kLong &&
                  weight.scalar_type() == at::kFloat && bin_start.is_contiguous() && pixel.is_contiguous() &&
                  weight.is_contiguous() && pixel.numel() == weight.numel(),
              "RoI Align taps: expected the contiguous int64/int64/float32 tensors the forward returned");
  return {bin_start, pixel, weight, bin_start.data_ptr<int64_t>(), pixel.data_ptr<int64_t>(), weight.data_ptr<float>()};
}

// A bin's samples lie less than a pixel apart when the RoI is small, so many of its taps read
// the same pixel: add their weights into the first and zero the rest (skipped by the gather and
// the scatter). On Appendix A's shapes this cuts the rows read and written per bin by about 2x;
// the sum changes only by rounding (w1 * x + w2 * x against (w1 + w2) * x).
// The pairwise scan is quadratic in the bin's taps, so bins of more than 3x3 samples (RoIs much
// larger than Appendix A's at 600 px) keep their taps as they are: same result, no merging.
constexpr int64_t kMergeMaxTaps = 3 * 3 * 4;

void merge_taps(Taps& taps, int64_t t0, int64_t t1) {
  if (t1 - t0 > kMergeMaxTaps) return;
  for (int64_t i = t0 + 1; i < t1; ++i) {
    if (taps.weight[i] == 0.0f) continue;
    for (int64_t j = t0; j < i; ++j) {
      if (taps.pixel[j] == taps.pixel[i] && taps.weight[j] != 0.0f) {
        taps.weight[j] += taps.weight[i];
        taps.weight[i] = 0.0f;
        break;
      }
    }
  }
}

// The bilinear taps of every bin of every RoI, exactly as torchvision's pre_calc_for_bilinear_
// interpolate: invalid samples get weight 0 (kept, so the layout is fixed per RoI).
Taps roi_align_taps(const Tensor& rois_t, int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w,
                    double spatial_scale_d, int64_t sampling_ratio, bool aligned) {
  const int64_t k = rois_t.size(0);
  auto rois = rois_t.accessor<float, 2>();
  const float spatial_scale = static_cast<float>(spatial_scale_d);
  const float offset = aligned ? 0.5f : 0.0f;
  std::vector<int64_t> grid_h(k), grid_w(k), roi_start(k + 1, 0);
  std::vector<float> start_h(k), start_w(k), bin_h(k), bin_w(k);
  for (int64_t r = 0; r < k; ++r) {
    float sw = rois[r][1] * spatial_scale - offset, sh = rois[r][2] * spatial_scale - offset;
    float ew = rois[r][3] * spatial_scale - offset, eh = rois[r][4] * spatial_scale - offset;
    float rw = ew - sw, rh = eh - sh;
    if (!aligned) {  // legacy: force malformed RoIs to be 1x1
      rw = std::max(rw, 1.0f);
      rh = std::max(rh, 1.0f);
    }
    start_h[r] = sh;
    start_w[r] = sw;
    bin_h[r] = rh / pooled_h;
    bin_w[r] = rw / pooled_w;
    grid_h[r] = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(rh / pooled_h));
    grid_w[r] = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(rw / pooled_w));
    grid_h[r] = std::max<int64_t>(grid_h[r], 0);
    grid_w[r] = std::max<int64_t>(grid_w[r], 0);
    roi_start[r + 1] = roi_start[r] + pooled_h * pooled_w * grid_h[r] * grid_w[r] * 4;
  }
  const int64_t bins = k * pooled_h * pooled_w;
  const auto longs = at::TensorOptions().dtype(at::kLong);
  Taps taps = taps_of(at::empty({bins + 1}, longs), at::zeros({roi_start[k]}, longs),
                      at::zeros({roi_start[k]}, at::TensorOptions().dtype(at::kFloat)));
  for (int64_t r = 0; r < k; ++r) {
    const int64_t per_bin = grid_h[r] * grid_w[r] * 4;
    for (int64_t b = 0; b < pooled_h * pooled_w; ++b) taps.bin_start[r * pooled_h * pooled_w + b] = roi_start[r] + b * per_bin;
  }
  taps.bin_start[bins] = roi_start[k];
  at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t batch = static_cast<int64_t>(rois[r][0]);
      const int64_t gh = grid_h[r], gw = grid_w[r];
      const float count = static_cast<float>(std::max<int64_t>(gh * gw, 1));
      int64_t t = roi_start[r];
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          for (int64_t iy = 0; iy < gh; ++iy) {
            const float yy = start_h[r] + ph * bin_h[r] + (iy + 0.5f) * bin_h[r] / static_cast<float>(gh);
            for (int64_t ix = 0; ix < gw; ++ix, t += 4) {
              float y = yy;
              float x = start_w[r] + pw * bin_w[r] + (ix + 0.5f) * bin_w[r] / static_cast<float>(gw);
              if (y < -1.0f || y > height || x < -1.0f || x > width) continue;  // weights stay 0
              if (y <= 0) y = 0;
              if (x <= 0) x = 0;
              int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x), y_high, x_high;
              if (y_low >= height - 1) {
                y_high = y_low = height - 1;
                y = static_cast<float>(y_low);
              } else {
                y_high = y_low + 1;
              }
              if (x_low >= width - 1) {
                x_high = x_low = width - 1;
                x = static_cast<float>(x_low);
              } else {
                x_high = x_low + 1;
              }
              const float ly = y - y_low, lx = x - x_low, hy = 1.0f - ly, hx = 1.0f - lx;
              const int64_t base = batch * height * width;
              taps.pixel[t] = base + y_low * width + x_low;
              taps.pixel[t + 1] = base + y_low * width + x_high;
              taps.pixel[t + 2] = base + y_high * width + x_low;
              taps.pixel[t + 3] = base + y_high * width + x_high;
              taps.weight[t] = hy * hx / count;
              taps.weight[t + 1] = hy * lx / count;
              taps.weight[t + 2] = ly * hx / count;
              taps.weight[t + 3] = ly * lx / count;
            }
          }
          merge_taps(taps, t - gh * gw * 4, t);
        }
      }
    }
  });
  return taps;
}

// The output (411 MB in fp32 at Appendix A's shapes) is written once and read only later by
// res5: on AVX512, fp32 rows go out with streaming stores, which skip reading each cache line
// before writing it.
inline void store_out(float* o, const Vec* acc, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if (reinterpret_cast<uintptr_t>(o) % 64 == 0) {
    for (int64_t r = 0; r < n; ++r) _mm512_stream_ps(o + r * VF, acc[r]);
    return;
  }
#endif
  for (int64_t r = 0; r < n; ++r) store(o + r * VF, acc[r]);
}
inline void store_out(c10::BFloat16* o, const Vec* acc, int64_t n) {
  for (int64_t r = 0; r < n; ++r) store(o + r * VF, acc[r]);
}

// out[b, :] = sum over the bin's taps of weight * in[pixel, :]. Channels go in blocks of
// kRegs vectors held in registers across the taps; a scalar loop takes the remainder.
template <typename scalar_t>
void gather_bins(const Taps& taps, const scalar_t* in, scalar_t* out, int64_t bins, int64_t c) {
  constexpr int64_t kRegs = 8;
  const int64_t vec_end = c - c % (kRegs * VF);
  at::parallel_for(0, bins, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t t0 = taps.bin_start[b], t1 = taps.bin_start[b + 1];
      scalar_t* o = out + b * c;
      for (int64_t c0 = 0; c0 < vec_end; c0 += kRegs * VF) {
        Vec acc[kRegs];
        for (int64_t r = 0; r < kRegs; ++r) acc[r] = Vec(0.0f);
        for (int64_t t = t0; t < t1; ++t) {
          const float w = taps.weight[t];
          if (w == 0.0f) continue;
          const Vec wv(w);
          const scalar_t* row = in + taps.pixel[t] * c + c0;
          for (int64_t r = 0; r < kRegs; ++r) acc[r] = at::vec::fmadd(wv, load(row + r * VF), acc[r]);
        }
        store_out(o + c0, acc, kRegs);
      }
      for (int64_t j = vec_end; j < c; ++j) {
        float acc = 0.0f;
        for (int64_t t = t0; t < t1; ++t) acc += taps.weight[t] * static_cast<float>(in[taps.pixel[t] * c + j]);
        o[j] = static_cast<scalar_t>(acc);
      }
    }
#if defined(CPU_CAPABILITY_AVX512)
    _mm_sfence();  // streaming stores are visible before the task ends
#endif
  });
}

// grad_in[pixel, :] += weight * grad[b, :] over all taps; one task per block of channels.
template <typename scalar_t>
void scatter_bins(const Taps& taps, const scalar_t* grad, float* grad_in, int64_t bins, int64_t c) {
  const int64_t blocks = (c + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kChannelBlock, c1 = std::min(c, c0 + kChannelBlock);
      const bool full = c1 - c0 == kChannelBlock;
      for (int64_t b = 0; b < bins; ++b) {
        const scalar_t* g = grad + b * c + c0;
        Vec gv[kChannelBlock / VF];
        if (full) {
          for (int64_t r = 0; r < kChannelBlock / VF; ++r) gv[r] = load(g + r * VF);
        }
        for (int64_t t = taps.bin_start[b]; t < taps.bin_start[b + 1]; ++t) {
          const float w = taps.weight[t];
          if (w == 0.0f) continue;
          float* dst = grad_in + taps.pixel[t] * c + c0;
          if (full) {
            const Vec wv(w);
            for (int64_t r = 0; r < kChannelBlock / VF; ++r) {
              at::vec::fmadd(wv, gv[r], Vec::loadu(dst + r * VF)).store(dst + r * VF);
            }
          } else {
            for (int64_t j = 0; j < c1 - c0; ++j) dst[j] += w * static_cast<float>(g[j]);
          }
        }
      }
    }
  });
}

void check_rois(const Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5 && rois.scalar_type() == at::kFloat && rois.is_contiguous(),
              "rois must be a contiguous float32 Tensor[K, 5]");
}

// input: [N, H, W, C] contiguous (channels-last rows), fp32 or bf16. Returns [K, oh, ow, C]
// and the taps (bin_start, pixel, weight) for the backward.
std::vector<Tensor> roi_align_forward(const Tensor& input, const Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                                      double spatial_scale, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(), "input must be a contiguous [N, H, W, C] tensor");
  check_rois(rois);
  const int64_t h = input.size(1), w = input.size(2), c = input.size(3), k = rois.size(0);
  Tensor out = at::empty({k, pooled_h, pooled_w, c}, input.options());
  Taps taps = roi_align_taps(rois, h, w, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned);
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16, "input must be fp32 or bf16");
  if (input.scalar_type() == at::kFloat) {
    gather_bins<float>(taps, input.data_ptr<float>(), out.data_ptr<float>(), k * pooled_h * pooled_w, c);
  } else {
    gather_bins<c10::BFloat16>(taps, input.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>(), k * pooled_h * pooled_w, c);
  }
  return {out, taps.bin_start_t, taps.pixel_t, taps.weight_t};
}

// grad: [K, oh, ow, C] contiguous; the taps the forward returned. Returns the fp32 gradient of
// the [N, H, W, C] input.
Tensor roi_align_backward(const Tensor& grad, const Tensor& bin_start, const Tensor& pixel, const Tensor& weight,
                          int64_t n, int64_t h, int64_t w) {
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous(), "grad must be a contiguous [K, oh, ow, C] tensor");
  const int64_t k = grad.size(0), pooled_h = grad.size(1), pooled_w = grad.size(2), c = grad.size(3);
  TORCH_CHECK(bin_start.numel() == k * pooled_h * pooled_w + 1, "RoI Align taps do not match the gradient's bins");
  Tensor grad_in = at::zeros({n, h, w, c}, grad.options().dtype(at::kFloat));
  Taps taps = taps_of(bin_start, pixel, weight);
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16, "grad must be fp32 or bf16");
  if (grad.scalar_type() == at::kFloat) {
    scatter_bins<float>(taps, grad.data_ptr<float>(), grad_in.data_ptr<float>(), k * pooled_h * pooled_w, c);
  } else {
    scatter_bins<c10::BFloat16>(taps, grad.data_ptr<c10::BFloat16>(), grad_in.data_ptr<float>(), k * pooled_h * pooled_w, c);
  }
  return grad_in;
}

// RoI max pooling, as torchvision's roi_pool_kernel.cpp. The cell range [hs, he) x [ws, we)
// of every bin, computed as torchvision does in fp32: C round() of the scaled corners,
// malformed RoIs forced to 1x1, floor / ceil bin edges, clipped to the map.
struct PoolBin {
  int64_t base;  // first row of the RoI's image in the [N * H * W, C] feature rows
  int64_t hs, he, ws, we;
  bool empty() const { return he <= hs || we <= ws; }
};

std::vector<PoolBin> roi_pool_bins(const Tensor& rois_t, int64_t height, int64_t width, int64_t pooled_h,
                                   int64_t pooled_w, double spatial_scale_d) {
  const int64_t k = rois_t.size(0);
  auto rois = rois_t.accessor<float, 2>();
  const float scale = static_cast<float>(spatial_scale_d);
  std::vector<PoolBin> bins(k * pooled_h * pooled_w);
  for (int64_t r = 0; r < k; ++r) {
    const int64_t base = static_cast<int64_t>(rois[r][0]) * height * width;
    const int64_t sw = static_cast<int64_t>(std::round(rois[r][1] * scale));
    const int64_t sh = static_cast<int64_t>(std::round(rois[r][2] * scale));
    const int64_t ew = static_cast<int64_t>(std::round(rois[r][3] * scale));
    const int64_t eh = static_cast<int64_t>(std::round(rois[r][4] * scale));
    const float bin_h = static_cast<float>(std::max<int64_t>(eh - sh + 1, 1)) / static_cast<float>(pooled_h);
    const float bin_w = static_cast<float>(std::max<int64_t>(ew - sw + 1, 1)) / static_cast<float>(pooled_w);
    auto clip = [](int64_t v, int64_t size) { return std::min(std::max<int64_t>(v, 0), size); };
    for (int64_t ph = 0; ph < pooled_h; ++ph) {
      for (int64_t pw = 0; pw < pooled_w; ++pw) {
        PoolBin& bin = bins[(r * pooled_h + ph) * pooled_w + pw];
        bin.base = base;
        bin.hs = clip(static_cast<int64_t>(std::floor(static_cast<float>(ph) * bin_h)) + sh, height);
        bin.he = clip(static_cast<int64_t>(std::ceil(static_cast<float>(ph + 1) * bin_h)) + sh, height);
        bin.ws = clip(static_cast<int64_t>(std::floor(static_cast<float>(pw) * bin_w)) + sw, width);
        bin.we = clip(static_cast<int64_t>(std::ceil(static_cast<float>(pw + 1) * bin_w)) + sw, width);
      }
    }
  }
  return bins;
}

// The max over one bin of channels [c0, c0 + kRegs * VF), and the cell (h * W + w, as a float;
// -1 while nothing beat the start value) that holds it. torchvision's scan: start at -FLT_MAX,
// h then w, replace only on a strictly greater value, so ties keep the first cell and NaN never
// wins.
template <int64_t kRegs, typename scalar_t>
void bin_max(const PoolBin& bin, const scalar_t* in, int64_t width, int64_t c, int64_t c0, Vec* mx, Vec* cell) {
  for (int64_t r = 0; r < kRegs; ++r) {
    mx[r] = Vec(-FLT_MAX);
    if (cell) cell[r] = Vec(-1.0f);
  }
  for (int64_t y = bin.hs; y < bin.he; ++y) {
    for (int64_t x = bin.ws; x < bin.we; ++x) {
      const scalar_t* row = in + (bin.base + y * width + x) * c + c0;
      const Vec here(static_cast<float>(y * width + x));
      for (int64_t r = 0; r < kRegs; ++r) {
        const Vec v = load(row + r * VF);
        const Vec greater = v > mx[r];
        mx[r] = Vec::blendv(mx[r], v, greater);
        if (cell) cell[r] = Vec::blendv(cell[r], here, greater);
      }
    }
  }
}

// The same for one channel j, in scalar code (the channels past the vector blocks).
template <typename scalar_t>
float bin_max_scalar(const PoolBin& bin, const scalar_t* in, int64_t width, int64_t c, int64_t j, int64_t* cell) {
  float mx = -FLT_MAX;
  *cell = -1;
  for (int64_t y = bin.hs; y < bin.he; ++y) {
    for (int64_t x = bin.ws; x < bin.we; ++x) {
      const float v = static_cast<float>(in[(bin.base + y * width + x) * c + j]);
      if (v > mx) {
        mx = v;
        *cell = y * width + x;
      }
    }
  }
  return mx;
}

// out[b, :] = max over the bin's cells of in[cell, :]; empty bins give 0. Parallel over bins.
template <typename scalar_t>
void max_bins(const std::vector<PoolBin>& bins, const scalar_t* in, scalar_t* out, int64_t width, int64_t c) {
  constexpr int64_t kRegs = 8;
  const int64_t vec_end = c - c % (kRegs * VF);
  at::parallel_for(0, static_cast<int64_t>(bins.size()), 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const PoolBin& bin = bins[b];
      scalar_t* o = out + b * c;
      if (bin.empty()) {
        std::fill(o, o + c, static_cast<scalar_t>(0.0f));
        continue;
      }
      for (int64_t c0 = 0; c0 < vec_end; c0 += kRegs * VF) {
        Vec mx[kRegs];
        bin_max<kRegs>(bin, in, width, c, c0, mx, nullptr);
        for (int64_t r = 0; r < kRegs; ++r) store(o + c0 + r * VF, mx[r]);
      }
      int64_t cell;
      for (int64_t j = vec_end; j < c; ++j) o[j] = static_cast<scalar_t>(bin_max_scalar(bin, in, width, c, j, &cell));
    }
  });
}

// grad_in[argmax cell, :] += grad[b, :], the argmax found again from the input (nothing but
// the input and the RoIs is kept between forward and backward). One task per block of
// channels, bins in order: no two threads write the same element.
template <typename scalar_t>
void scatter_max_bins(const std::vector<PoolBin>& bins, const scalar_t* in, const scalar_t* grad, float* grad_in,
                      int64_t width, int64_t c) {
  constexpr int64_t kRegs = kChannelBlock / VF;
  const int64_t blocks = (c + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kChannelBlock, c1 = std::min(c, c0 + kChannelBlock);
      for (int64_t b = 0; b < static_cast<int64_t>(bins.size()); ++b) {
        const PoolBin& bin = bins[b];
        if (bin.empty()) continue;
        const scalar_t* g = grad + b * c;
        if (c1 - c0 == kChannelBlock) {
          Vec mx[kRegs], cell[kRegs], gv[kRegs];
          bin_max<kRegs>(bin, in, width, c, c0, mx, cell);
          for (int64_t r = 0; r < kRegs; ++r) gv[r] = load(g + c0 + r * VF);
          // Each cell of the bin adds the gradient of the channels whose argmax it is, and +0
          // elsewhere (exact: the sums start at +0 and never become -0), in whole vectors.
          for (int64_t y = bin.hs; y < bin.he; ++y) {
            for (int64_t x = bin.ws; x < bin.we; ++x) {
              const Vec here(static_cast<float>(y * width + x));
              float* dst = grad_in + (bin.base + y * width + x) * c + c0;
              for (int64_t r = 0; r < kRegs; ++r) {
                (Vec::loadu(dst + r * VF) + (gv[r] & (cell[r] == here))).store(dst + r * VF);
              }
            }
          }
        } else {
          for (int64_t j = c0; j < c1; ++j) {
            int64_t cell;
            bin_max_scalar(bin, in, width, c, j, &cell);
            if (cell >= 0) grad_in[(bin.base + cell) * c + j] += static_cast<float>(g[j]);
          }
        }
      }
    }
  });
}

void check_pool_input(const Tensor& input, const Tensor& rois) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous(), "input must be a contiguous [N, H, W, C] tensor");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16, "input must be fp32 or bf16");
  // The backward carries argmax cells in float lanes: exact below 2^24.
  TORCH_CHECK(input.size(1) * input.size(2) < (int64_t{1} << 24), "feature maps must have fewer than 2^24 cells");
  check_rois(rois);
}

// input: [N, H, W, C] contiguous (channels-last rows), fp32 or bf16. Returns [K, oh, ow, C].
Tensor roi_pool_forward(const Tensor& input, const Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                        double spatial_scale) {
  check_pool_input(input, rois);
  const int64_t h = input.size(1), w = input.size(2), c = input.size(3), k = rois.size(0);
  Tensor out = at::empty({k, pooled_h, pooled_w, c}, input.options());
  const std::vector<PoolBin> bins = roi_pool_bins(rois, h, w, pooled_h, pooled_w, spatial_scale);
  if (input.scalar_type() == at::kFloat) {
    max_bins<float>(bins, input.data_ptr<float>(), out.data_ptr<float>(), w, c);
  } else {
    max_bins<c10::BFloat16>(bins, input.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>(), w, c);
  }
  return out;
}

// grad: [K, oh, ow, C], input: the forward's [N, H, W, C] rows, same dtype. Returns the fp32
// gradient of the input.
Tensor roi_pool_backward(const Tensor& grad, const Tensor& input, const Tensor& rois, double spatial_scale) {
  check_pool_input(input, rois);
  TORCH_CHECK(grad.dim() == 4 && grad.is_contiguous() && grad.scalar_type() == input.scalar_type() &&
                  grad.size(0) == rois.size(0) && grad.size(3) == input.size(3),
              "grad must be a contiguous [K, oh, ow, C] tensor of the input's dtype");
  const int64_t h = input.size(1), w = input.size(2), c = input.size(3), pooled_h = grad.size(1), pooled_w = grad.size(2);
  Tensor grad_in = at::zeros(input.sizes(), input.options().dtype(at::kFloat));
  const std::vector<PoolBin> bins = roi_pool_bins(rois, h, w, pooled_h, pooled_w, spatial_scale);
  if (input.scalar_type() == at::kFloat) {
    scatter_max_bins<float>(bins, input.data_ptr<float>(), grad.data_ptr<float>(), grad_in.data_ptr<float>(), w, c);
  } else {
    scatter_max_bins<c10::BFloat16>(bins, input.data_ptr<c10::BFloat16>(), grad.data_ptr<c10::BFloat16>(),
                                    grad_in.data_ptr<float>(), w, c);
  }
  return grad_in;
}

// boxes: [N, 4] float32, sorted by decreasing score; categories: [N] int64 or empty (one
// category). Returns the kept positions (int64), in order.
Tensor nms_sorted(const Tensor& boxes, const Tensor& categories, double iou_threshold, int64_t max_output) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.scalar_type() == at::kFloat, "boxes must be float32 [N, 4]");
  const int64_t n = boxes.size(0);
  const bool batched = categories.numel() > 0;
  TORCH_CHECK(!batched || (categories.numel() == n && categories.scalar_type() == at::kLong), "categories must be int64 [N]");
  Tensor b = boxes.contiguous();
  const float* p = b.data_ptr<float>();
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int64_t> cat(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    x1[i] = p[4 * i];
    y1[i] = p[4 * i + 1];
    x2[i] = p[4 * i + 2];
    y2[i] = p[4 * i + 3];
    area[i] = (x2[i] - x1[i]) * (y2[i] - y1[i]);
  }
  if (batched) {
    Tensor cc = categories.contiguous();
    std::copy(cc.data_ptr<int64_t>(), cc.data_ptr<int64_t>() + n, cat.begin());
  }
  const float thr = static_cast<float>(iou_threshold);
  const int64_t limit = max_output < 0 ? n : std::min(max_output, n);
  std::vector<uint8_t> removed(n, 0);
  std::vector<int64_t> keep;
  keep.reserve(limit);
  for (int64_t i = 0; i < n && static_cast<int64_t>(keep.size()) < limit; ++i) {
    if (removed[i]) continue;
    keep.push_back(i);
    const float ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = area[i];
    const int64_t ic = cat[i];
    // Branch-free over j (vectorised by the compiler); removed boxes are tested again harmlessly.
    for (int64_t j = i + 1; j < n; ++j) {
      const float iw = std::max(0.0f, std::min(ix2, x2[j]) - std::max(ix1, x1[j]));
      const float ih = std::max(0.0f, std::min(iy2, y2[j]) - std::max(iy1, y1[j]));
      const float inter = iw * ih;
      const float iou = inter / (ia + area[j] - inter);  // nan (two empty boxes) compares false
      removed[j] |= static_cast<uint8_t>((iou > thr) & (cat[j] == ic));
    }
  }
  Tensor out = at::empty({static_cast<int64_t>(keep.size())}, at::kLong);
  std::copy(keep.begin(), keep.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("roi_align_forward", &roi_align_forward, "RoI Align forward on [N, H, W, C] features; returns the output and its taps");
  m.def("roi_align_backward", &roi_align_backward, "RoI Align backward from the forward's taps; fp32 [N, H, W, C] gradient");
  m.def("roi_pool_forward", &roi_pool_forward, "RoI max pooling forward on [N, H, W, C] features");
  m.def("roi_pool_backward", &roi_pool_backward, "RoI max pooling backward; fp32 [N, H, W, C] gradient");
  m.def("nms_sorted", &nms_sorted, "greedy NMS over score-sorted boxes");
}
