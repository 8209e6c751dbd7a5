// TF custom ops: the integer pipeline of a fixed-point DSP (int8 activations, int8 / packed int4
// per-channel weights, int32 bias and accumulators, per-channel multiplier + shift requantization).
// The formulas are documented on the numpy golden model, aimet_tf/kernels/reference.py; the Python
// wrappers in aimet_tf/kernels/ops.py validate arguments before calling these ops, and every op
// also checks its inputs with OP_REQUIRES so that a bad call is a Python exception, not a crash.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "fixed_point.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace aimet_dsp {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;

// ----------------------------------------------------------------------------------------------
// Shared helpers

// Returns `status` from the enclosing Status-returning function unless `cond` holds.
#define AIMET_CHECK(cond, status) \
  do {                            \
    if (!(cond)) return (status); \
  } while (0)

struct Common {
  Rounding rounding = Rounding::kDouble;
  bool wide_accumulator = false;
  int activation_min = -128;
  int activation_max = 127;
};

void ReadCommon(OpKernelConstruction* ctx, Common* c, bool has_accumulator, bool has_activation) {
  std::string rounding;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("rounding", &rounding));
  c->rounding = rounding == "single" ? Rounding::kSingle : Rounding::kDouble;
  if (has_accumulator) {
    int bits;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("accumulator_bits", &bits));
    OP_REQUIRES(ctx, bits == 32 || bits == 64,
                errors::InvalidArgument("Expected accumulator_bits 32 or 64. Received: ", bits));
    c->wide_accumulator = bits == 64;
  }
  if (has_activation) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation_min", &c->activation_min));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation_max", &c->activation_max));
    OP_REQUIRES(ctx, -128 <= c->activation_min && c->activation_min <= c->activation_max && c->activation_max <= 127,
                errors::InvalidArgument("Expected -128 <= activation_min <= activation_max <= 127. Received: ",
                                        c->activation_min, ", ", c->activation_max));
  }
}

void CheckZeroPoint(OpKernelConstruction* ctx, const char* name, int zp) {
  OP_REQUIRES(ctx, -128 <= zp && zp <= 127,
              errors::InvalidArgument("Expected ", name, " in [-128, 127]. Received: ", zp));
}

inline int8_t ClampToInt8(int32_t v, int lo, int hi) { return static_cast<int8_t>(std::min(std::max<int32_t>(v, lo), hi)); }

// TFLite's padding rule: returns (out, pad_before) or out = -1 if the output would be empty.
void ComputePadding(int64_t in, int64_t filter, int64_t stride, int64_t dilation, bool same, int64_t* out,
                    int64_t* pad) {
  const int64_t effective = (filter - 1) * dilation + 1;
  *out = same ? (in + stride - 1) / stride : (in - effective + stride) / stride;
  *pad = std::max<int64_t>(0, ((*out - 1) * stride + effective - in) / 2);
}

Status ValidateWindowAttrs(const std::vector<int32_t>& strides, const std::vector<int32_t>& dilations,
                           const std::string& name) {
  if (strides.size() != 2 || dilations.size() != 2 || strides[0] < 1 || strides[1] < 1 || dilations[0] < 1 ||
      dilations[1] < 1) {
    return errors::InvalidArgument(name, ": expected strides and dilations of two positive ints.");
  }
  return Status();
}

// Per-channel requantization parameters: `multiplier` / `shift` of size 1 (per tensor) or n.
struct ChannelRequant {
  const int32_t* multiplier = nullptr;
  const int32_t* shift = nullptr;
  int64_t size = 0;
  int32_t m(int64_t c) const { return multiplier[size == 1 ? 0 : c]; }
  int s(int64_t c) const { return shift[size == 1 ? 0 : c]; }
};

Status ReadChannelRequant(OpKernelContext* ctx, int index, int64_t channels, Rounding rounding, ChannelRequant* r) {
  const Tensor& mult = ctx->input(index);
  const Tensor& shift = ctx->input(index + 1);
  AIMET_CHECK(mult.dims() == 1 && shift.dims() == 1 && mult.NumElements() == shift.NumElements() &&
                       (mult.NumElements() == 1 || mult.NumElements() == channels),
              errors::InvalidArgument("Expected multiplier and shift of shape [1] or [", channels,
                                      "]. Received: multiplier ", mult.shape().DebugString(), ", shift ",
                                      shift.shape().DebugString()));
  r->multiplier = mult.flat<int32_t>().data();
  r->shift = shift.flat<int32_t>().data();
  r->size = mult.NumElements();
  const int max_shift = rounding == Rounding::kSingle ? 30 : 31;
  for (int64_t c = 0; c < r->size; ++c) {
    AIMET_CHECK(r->multiplier[c] >= 0 && r->shift[c] >= -31 && r->shift[c] <= max_shift,
                errors::InvalidArgument("Expected multiplier >= 0 and shift in [-31, ", max_shift,
                                        "]. Received at channel ", c, ": multiplier ", r->multiplier[c], ", shift ",
                                        r->shift[c]));
  }
  return Status();
}

Status ReadBias(OpKernelContext* ctx, int index, int64_t channels, const int32_t** bias) {
  const Tensor& b = ctx->input(index);
  AIMET_CHECK(b.dims() == 1 && (b.NumElements() == 0 || b.NumElements() == channels),
              errors::InvalidArgument("Expected bias of shape [0] (no bias) or [", channels,
                                      "]. Received: ", b.shape().DebugString()));
  *bias = b.NumElements() ? b.flat<int32_t>().data() : nullptr;
  return Status();
}

// Weights: int8 tensor of the logical shape, or (weight_bits = 4) a 1-D packed int4 buffer with
// the logical shape in `filter_shape`. Unpacks into `storage` and returns the int8 pointer.
Status ReadWeights(OpKernelContext* ctx, int index, int weight_bits, const std::vector<int64_t>& filter_shape,
                 int expected_rank, std::vector<int64_t>* shape, std::vector<int8_t>* storage,
                 const int8_t** data) {
  const Tensor& w = ctx->input(index);
  if (weight_bits == 8) {
    AIMET_CHECK(w.dims() == expected_rank,
                errors::InvalidArgument("Expected int8 weights of rank ", expected_rank,
                                        ". Received: ", w.shape().DebugString()));
    shape->assign(w.shape().dim_sizes().begin(), w.shape().dim_sizes().end());
    *data = w.flat<int8_t>().data();
    return Status();
  }
  AIMET_CHECK(static_cast<int>(filter_shape.size()) == expected_rank,
              errors::InvalidArgument("Expected filter_shape of rank ", expected_rank,
                                      " for packed int4 weights. Received rank ", filter_shape.size()));
  int64_t count = 1;
  for (int64_t d : filter_shape) {
    AIMET_CHECK(d > 0, errors::InvalidArgument("Expected positive filter_shape entries."));
    count *= d;
  }
  AIMET_CHECK(w.dims() == 1 && w.NumElements() == (count + 1) / 2,
              errors::InvalidArgument("Expected ", (count + 1) / 2, " bytes of packed int4 weights for ", count,
                                      " values. Received: ", w.shape().DebugString()));
  const uint8_t* packed = reinterpret_cast<const uint8_t*>(w.flat<int8_t>().data());
  storage->resize(count);
  for (int64_t i = 0; i < count; ++i) {
    const int nibble = (i & 1) ? (packed[i >> 1] >> 4) : (packed[i >> 1] & 0xF);
    (*storage)[i] = static_cast<int8_t>(nibble >= 8 ? nibble - 16 : nibble);
  }
  *shape = filter_shape;
  *data = storage->data();
  return Status();
}

// ----------------------------------------------------------------------------------------------
// Conv2D and DepthwiseConv2D

Status ConvShape(InferenceContext* c, bool depthwise) {
  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  std::vector<int32_t> strides, dilations, filter_shape_attr;
  std::string padding;
  int weight_bits;
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("dilations", &dilations));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  TF_RETURN_IF_ERROR(c->GetAttr("weight_bits", &weight_bits));
  TF_RETURN_IF_ERROR(c->GetAttr("filter_shape", &filter_shape_attr));
  TF_RETURN_IF_ERROR(ValidateWindowAttrs(strides, dilations, depthwise ? "AimetDspDepthwiseConv2D" : "AimetDspConv2D"));
  DimensionHandle kh, kw, out_c;
  if (weight_bits == 4) {
    if (filter_shape_attr.size() != 4) return errors::InvalidArgument("filter_shape must have 4 entries for int4.");
    kh = c->MakeDim(filter_shape_attr[1]);
    kw = c->MakeDim(filter_shape_attr[2]);
    out_c = c->MakeDim(filter_shape_attr[depthwise ? 3 : 0]);
  } else {
    ShapeHandle filter;
    TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &filter));
    kh = c->Dim(filter, 1);
    kw = c->Dim(filter, 2);
    out_c = c->Dim(filter, depthwise ? 3 : 0);
  }
  DimensionHandle out_dims[2];
  DimensionHandle in_dims[2] = {c->Dim(input, 1), c->Dim(input, 2)};
  DimensionHandle k_dims[2] = {kh, kw};
  for (int i = 0; i < 2; ++i) {
    if (!c->ValueKnown(in_dims[i]) || !c->ValueKnown(k_dims[i])) {
      out_dims[i] = c->UnknownDim();
      continue;
    }
    int64_t out, pad;
    ComputePadding(c->Value(in_dims[i]), c->Value(k_dims[i]), strides[i], dilations[i], padding == "SAME", &out, &pad);
    if (out < 1) return errors::InvalidArgument("The convolution window is larger than the input (VALID padding).");
    out_dims[i] = c->MakeDim(out);
  }
  c->set_output(0, c->MakeShape({c->Dim(input, 0), out_dims[0], out_dims[1], out_c}));
  return Status();
}

#define AIMET_CONV_ATTRS                                          \
  Attr("strides: list(int) = [1, 1]")                             \
      .Attr("dilations: list(int) = [1, 1]")                      \
      .Attr("padding: {'SAME', 'VALID'}")                         \
      .Attr("input_zero_point: int")                              \
      .Attr("output_zero_point: int")                             \
      .Attr("activation_min: int = -128")                         \
      .Attr("activation_max: int = 127")                          \
      .Attr("weight_bits: int = 8")                               \
      .Attr("filter_shape: list(int) = []")                       \
      .Attr("rounding: {'double', 'single'} = 'double'")          \
      .Attr("accumulator_bits: int = 32")

REGISTER_OP("AimetDspConv2D")
    .Input("input: int8")
    .Input("filter: int8")
    .Input("bias: int32")
    .Input("multiplier: int32")
    .Input("shift: int32")
    .Output("output: int8")
    .AIMET_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) { return ConvShape(c, false); })
    .Doc(R"doc(Int8 2-D convolution, per-channel requantization (TFLite CONV_2D int8 semantics).
filter: int8 [O, KH, KW, C / groups], or packed int4 bytes with weight_bits=4 and filter_shape.)doc");

REGISTER_OP("AimetDspDepthwiseConv2D")
    .Input("input: int8")
    .Input("filter: int8")
    .Input("bias: int32")
    .Input("multiplier: int32")
    .Input("shift: int32")
    .Output("output: int8")
    .AIMET_CONV_ATTRS
    .SetShapeFn([](InferenceContext* c) { return ConvShape(c, true); })
    .Doc(R"doc(Int8 depthwise convolution (TFLite DEPTHWISE_CONV_2D int8 semantics).
filter: int8 [1, KH, KW, C * M], or packed int4 bytes with weight_bits=4 and filter_shape.)doc");

template <bool kDepthwise>
class ConvOp : public OpKernel {
 public:
  explicit ConvOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, true, true);
    std::vector<int32_t> fs;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations_));
    OP_REQUIRES_OK(ctx, ValidateWindowAttrs(strides_, dilations_, name()));
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    same_ = padding == "SAME";
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_zero_point", &input_zp_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_zero_point", &output_zp_));
    CheckZeroPoint(ctx, "input_zero_point", input_zp_);
    CheckZeroPoint(ctx, "output_zero_point", output_zp_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_bits", &weight_bits_));
    OP_REQUIRES(ctx, weight_bits_ == 8 || weight_bits_ == 4,
                errors::InvalidArgument("Expected weight_bits 8 or 4. Received: ", weight_bits_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_shape", &fs));
    filter_shape_.assign(fs.begin(), fs.end());
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    OP_REQUIRES(ctx, input.dims() == 4,
                errors::InvalidArgument("Expected input [N, H, W, C]. Received: ", input.shape().DebugString()));
    std::vector<int64_t> fshape;
    std::vector<int8_t> unpacked;
    const int8_t* w8 = nullptr;
    OP_REQUIRES_OK(ctx, ReadWeights(ctx, 1, weight_bits_, filter_shape_, 4, &fshape, &unpacked, &w8));
    const int64_t n = input.dim_size(0), h = input.dim_size(1), wd = input.dim_size(2), c = input.dim_size(3);
    const int64_t kh = fshape[1], kw = fshape[2];
    const int64_t out_c = kDepthwise ? fshape[3] : fshape[0];
    int64_t groups = 1, depth_multiplier = 1, filter_c = 0;
    if (kDepthwise) {
      OP_REQUIRES(ctx, fshape[0] == 1 && c > 0 && out_c % c == 0,
                  errors::InvalidArgument("Expected depthwise filter [1, KH, KW, C * M] with C = ", c,
                                          ". Received filter shape [", fshape[0], ", ", kh, ", ", kw, ", ", out_c, "]"));
      depth_multiplier = out_c / c;
    } else {
      filter_c = fshape[3];
      // The per-tap partial sum is int32: exact while filter_c * 255 * 128 < 2^31.
      OP_REQUIRES(ctx, filter_c <= 65536,
                  errors::InvalidArgument("Expected at most 65536 filter input channels. Received: ", filter_c));
      OP_REQUIRES(ctx, filter_c > 0 && c % filter_c == 0 && out_c % (c / filter_c) == 0,
                  errors::InvalidArgument("Input channels ", c, " do not match filter input channels ", filter_c,
                                          " (groups = C / filter channels must divide the ", out_c,
                                          " output channels)."));
      groups = c / filter_c;
    }
    const int32_t* bias;
    OP_REQUIRES_OK(ctx, ReadBias(ctx, 2, out_c, &bias));
    ChannelRequant rq;
    OP_REQUIRES_OK(ctx, ReadChannelRequant(ctx, 3, out_c, common_.rounding, &rq));
    int64_t oh, ow, pt, pl;
    ComputePadding(h, kh, strides_[0], dilations_[0], same_, &oh, &pt);
    ComputePadding(wd, kw, strides_[1], dilations_[1], same_, &ow, &pl);
    OP_REQUIRES(ctx, oh >= 1 && ow >= 1,
                errors::InvalidArgument("The convolution window is larger than the input (VALID padding)."));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, oh, ow, out_c}), &output));
    int8_t* y = output->flat<int8_t>().data();
    // Zero-point-corrected input and the weights as int16: int16 x int16 -> int32 products let the
    // compiler vectorize the inner loops (pmaddwd); every value and product is exact.
    const int8_t* x8 = input.flat<int8_t>().data();
    std::vector<int16_t> x(input.NumElements());
    for (int64_t i = 0; i < input.NumElements(); ++i) x[i] = static_cast<int16_t>(x8[i] - input_zp_);
    const int64_t weight_count = kh * kw * (kDepthwise ? out_c : out_c * filter_c);
    std::vector<int16_t> w(w8, w8 + weight_count);
    const int64_t out_per_group = out_c / groups;
    std::vector<int64_t> acc(out_c);
    std::vector<int32_t> acc32(out_c);  // depthwise: one window's sum, exact below 65536 taps
    OP_REQUIRES(ctx, !kDepthwise || kh * kw <= 65536,
                errors::InvalidArgument("Expected at most 65536 taps per depthwise window. Received: ", kh * kw));
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t oy = 0; oy < oh; ++oy) {
        for (int64_t ox = 0; ox < ow; ++ox) {
          std::fill(acc.begin(), acc.end(), 0);
          std::fill(acc32.begin(), acc32.end(), 0);
          const int64_t iy0 = oy * strides_[0] - pt, ix0 = ox * strides_[1] - pl;
          for (int64_t ky = 0; ky < kh; ++ky) {
            const int64_t iy = iy0 + ky * dilations_[0];
            if (iy < 0 || iy >= h) continue;
            for (int64_t kx = 0; kx < kw; ++kx) {
              const int64_t ix = ix0 + kx * dilations_[1];
              if (ix < 0 || ix >= wd) continue;
              const int16_t* xp = x.data() + ((b * h + iy) * wd + ix) * c;
              if (kDepthwise) {
                const int16_t* wp = w.data() + (ky * kw + kx) * out_c;
                int32_t* a32 = acc32.data();
                if (depth_multiplier == 1) {
                  for (int64_t ic = 0; ic < c; ++ic) a32[ic] += static_cast<int32_t>(wp[ic]) * xp[ic];
                } else {
                  for (int64_t ic = 0; ic < c; ++ic) {
                    for (int64_t m = 0; m < depth_multiplier; ++m) {
                      const int64_t o = ic * depth_multiplier + m;
                      a32[o] += static_cast<int32_t>(wp[o]) * xp[ic];
                    }
                  }
                }
              } else {
                for (int64_t o = 0; o < out_c; ++o) {
                  const int16_t* xg = xp + (o / out_per_group) * filter_c;
                  const int16_t* wp = w.data() + ((o * kh + ky) * kw + kx) * filter_c;
                  int32_t partial = 0;  // <= filter_c * 255 * 128: exact (filter_c <= 65536)
                  for (int64_t ic = 0; ic < filter_c; ++ic) partial += static_cast<int32_t>(wp[ic]) * xg[ic];
                  acc[o] += partial;
                }
              }
            }
          }
          if (kDepthwise) {
            for (int64_t o = 0; o < out_c; ++o) acc[o] = acc32[o];
          }
          int8_t* yp = y + ((b * oh + oy) * ow + ox) * out_c;
          for (int64_t o = 0; o < out_c; ++o) {
            const int32_t a = NarrowAccumulator(acc[o] + (bias ? bias[o] : 0), common_.wide_accumulator);
            const int32_t v =
                WrapInt32(int64_t{MultiplyByQuantizedMultiplier(a, rq.m(o), rq.s(o), common_.rounding)} + output_zp_);
            yp[o] = ClampToInt8(v, common_.activation_min, common_.activation_max);
          }
        }
      }
    }
  }

 private:
  Common common_;
  std::vector<int32_t> strides_, dilations_;
  std::vector<int64_t> filter_shape_;
  bool same_ = true;
  int input_zp_ = 0, output_zp_ = 0, weight_bits_ = 8;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspConv2D").Device(DEVICE_CPU), ConvOp<false>);
REGISTER_KERNEL_BUILDER(Name("AimetDspDepthwiseConv2D").Device(DEVICE_CPU), ConvOp<true>);

// ----------------------------------------------------------------------------------------------
// FullyConnected

REGISTER_OP("AimetDspFullyConnected")
    .Input("input: int8")
    .Input("weights: int8")
    .Input("bias: int32")
    .Input("multiplier: int32")
    .Input("shift: int32")
    .Input("effective_scale: double")
    .Output("output: int8")
    .Attr("input_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("weight_zero_point: int = 0")
    .Attr("requantize: {'fixed_point', 'float64'} = 'fixed_point'")
    .Attr("activation_min: int = -128")
    .Attr("activation_max: int = 127")
    .Attr("weight_bits: int = 8")
    .Attr("filter_shape: list(int) = []")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .Attr("accumulator_bits: int = 32")
    .SetShapeFn([](InferenceContext* c) {
      int weight_bits;
      std::vector<int32_t> fs;
      TF_RETURN_IF_ERROR(c->GetAttr("weight_bits", &weight_bits));
      TF_RETURN_IF_ERROR(c->GetAttr("filter_shape", &fs));
      DimensionHandle out;
      if (weight_bits == 4) {
        if (fs.size() != 2) return errors::InvalidArgument("filter_shape must have 2 entries for int4 weights.");
        out = c->MakeDim(fs[0]);
      } else {
        ShapeHandle w;
        TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &w));
        out = c->Dim(w, 0);
      }
      c->set_output(0, c->MakeShape({c->UnknownDim(), out}));
      return Status();
    })
    .Doc(R"doc(Int8 fully connected layer (TFLite FULLY_CONNECTED int8): input flattened to [B, D].
requantize='float64' rescales with round(double(acc) * effective_scale[o]) like LiteRT's reference
kernel; 'fixed_point' with the multiplier / shift.)doc");

class FullyConnectedOp : public OpKernel {
 public:
  explicit FullyConnectedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, true, true);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_zero_point", &input_zp_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_zero_point", &output_zp_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_zero_point", &weight_zp_));
    CheckZeroPoint(ctx, "input_zero_point", input_zp_);
    CheckZeroPoint(ctx, "output_zero_point", output_zp_);
    CheckZeroPoint(ctx, "weight_zero_point", weight_zp_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_bits", &weight_bits_));
    OP_REQUIRES(ctx, weight_bits_ == 8 || weight_bits_ == 4,
                errors::InvalidArgument("Expected weight_bits 8 or 4. Received: ", weight_bits_));
    std::vector<int32_t> fs;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("filter_shape", &fs));
    filter_shape_.assign(fs.begin(), fs.end());
    std::string requantize;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("requantize", &requantize));
    float64_ = requantize == "float64";
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    std::vector<int64_t> wshape;
    std::vector<int8_t> unpacked;
    const int8_t* w = nullptr;
    OP_REQUIRES_OK(ctx, ReadWeights(ctx, 1, weight_bits_, filter_shape_, 2, &wshape, &unpacked, &w));
    const int64_t out_c = wshape[0], depth = wshape[1];
    OP_REQUIRES(ctx, depth > 0 && input.NumElements() % depth == 0,
                errors::InvalidArgument("Input of ", input.NumElements(), " elements (shape ",
                                        input.shape().DebugString(), ") is not a multiple of the weights' depth ",
                                        depth, "."));
    const int32_t* bias;
    OP_REQUIRES_OK(ctx, ReadBias(ctx, 2, out_c, &bias));
    ChannelRequant rq;
    OP_REQUIRES_OK(ctx, ReadChannelRequant(ctx, 3, out_c, common_.rounding, &rq));
    const Tensor& scale_t = ctx->input(5);
    OP_REQUIRES(ctx, !float64_ || (scale_t.dims() == 1 && (scale_t.NumElements() == 1 || scale_t.NumElements() == out_c)),
                errors::InvalidArgument("Expected effective_scale of shape [1] or [", out_c,
                                        "] for float64 requantization. Received: ", scale_t.shape().DebugString()));
    const double* scales = float64_ ? scale_t.flat<double>().data() : nullptr;
    const int64_t batch = input.NumElements() / depth;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, out_c}), &output));
    const int8_t* x = input.flat<int8_t>().data();
    int8_t* y = output->flat<int8_t>().data();
    // int16 operands (exact: |x - z_x|, |w - z_w| <= 255) so the dot products vectorize; partial
    // sums in int32 over chunks short enough to be exact (16384 * 255 * 255 < 2^31).
    constexpr int64_t kChunk = 16384;
    std::vector<int16_t> xs(depth), ws(out_c * depth);
    for (int64_t i = 0; i < out_c * depth; ++i) ws[i] = static_cast<int16_t>(w[i] - weight_zp_);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t d = 0; d < depth; ++d) xs[d] = static_cast<int16_t>(x[b * depth + d] - input_zp_);
      for (int64_t o = 0; o < out_c; ++o) {
        const int16_t* wp = ws.data() + o * depth;
        int64_t acc = 0;
        for (int64_t start = 0; start < depth; start += kChunk) {
          const int64_t end = std::min(depth, start + kChunk);
          int32_t partial = 0;
          for (int64_t d = start; d < end; ++d) partial += static_cast<int32_t>(wp[d]) * xs[d];
          acc += partial;
        }
        const int32_t a = NarrowAccumulator(acc + (bias ? bias[o] : 0), common_.wide_accumulator);
        int32_t scaled;
        if (float64_) {
          // LiteRT's reference kernel: round(double(acc) * M) with C round() (ties away from zero).
          const double r = std::round(static_cast<double>(a) * scales[scale_t.NumElements() == 1 ? 0 : o]);
          scaled = static_cast<int32_t>(std::min<double>(std::max<double>(r, kInt32Min), kInt32Max));
        } else {
          scaled = MultiplyByQuantizedMultiplier(a, rq.m(o), rq.s(o), common_.rounding);
        }
        const int32_t v = WrapInt32(int64_t{scaled} + output_zp_);
        y[b * out_c + o] = ClampToInt8(v, common_.activation_min, common_.activation_max);
      }
    }
  }

 private:
  Common common_;
  std::vector<int64_t> filter_shape_;
  int input_zp_ = 0, output_zp_ = 0, weight_zp_ = 0, weight_bits_ = 8;
  bool float64_ = false;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspFullyConnected").Device(DEVICE_CPU), FullyConnectedOp);

// ----------------------------------------------------------------------------------------------
// Elementwise binary ops with numpy-style broadcasting

// Allocates the broadcast output of inputs 0 and 1 and calls fn(a_value, b_value) -> int8 for every
// output element (right-aligned broadcasting; an odometer walks the output index).
template <typename Fn>
void BroadcastBinary(OpKernelContext* ctx, const char* name, Fn fn) {
  const Tensor& a = ctx->input(0);
  const Tensor& b = ctx->input(1);
  const int rank = std::max(a.dims(), b.dims());
  OP_REQUIRES(ctx, rank <= 8, errors::InvalidArgument("Expected inputs of rank <= 8."));
  std::vector<int64_t> out_shape(rank), sa(rank, 0), sb(rank, 0);
  int64_t stride_a = 1, stride_b = 1;
  for (int i = rank - 1; i >= 0; --i) {
    const int ia = i - (rank - a.dims()), ib = i - (rank - b.dims());
    const int64_t da = ia >= 0 ? a.dim_size(ia) : 1, db = ib >= 0 ? b.dim_size(ib) : 1;
    OP_REQUIRES(ctx, da == db || da == 1 || db == 1,
                errors::InvalidArgument(name, " inputs do not broadcast: ", a.shape().DebugString(), " and ",
                                        b.shape().DebugString()));
    out_shape[i] = std::max(da, db);
    sa[i] = da == 1 ? 0 : stride_a;
    sb[i] = db == 1 ? 0 : stride_b;
    stride_a *= da;
    stride_b *= db;
  }
  TensorShape shape;
  for (int64_t d : out_shape) shape.AddDim(d);
  Tensor* output = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &output));
  const int8_t* xa = a.flat<int8_t>().data();
  const int8_t* xb = b.flat<int8_t>().data();
  int8_t* y = output->flat<int8_t>().data();
  const int64_t total = output->NumElements();
  std::vector<int64_t> index(rank, 0);
  int64_t offset_a = 0, offset_b = 0;
  for (int64_t i = 0; i < total; ++i) {
    y[i] = fn(xa[offset_a], xb[offset_b]);
    for (int d = rank - 1; d >= 0; --d) {
      ++index[d];
      offset_a += sa[d];
      offset_b += sb[d];
      if (index[d] < out_shape[d]) break;
      offset_a -= sa[d] * index[d];
      offset_b -= sb[d] * index[d];
      index[d] = 0;
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Add / Sub (with rescaling, numpy-style broadcasting)

REGISTER_OP("AimetDspAdd")
    .Input("input1: int8")
    .Input("input2: int8")
    .Output("output: int8")
    .Attr("input1_zero_point: int")
    .Attr("input2_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("input1_multiplier: int")
    .Attr("input1_shift: int")
    .Attr("input2_multiplier: int")
    .Attr("input2_shift: int")
    .Attr("output_multiplier: int")
    .Attr("output_shift: int")
    .Attr("left_shift: int = 20")
    .Attr("subtract: bool = false")
    .Attr("activation_min: int = -128")
    .Attr("activation_max: int = 127")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn([](InferenceContext* c) {
      return ::tensorflow::shape_inference::BroadcastBinaryOpOutputShapeFn(c, 0);
    })
    .Doc(R"doc(Int8 Add (or Sub) with rescaling of both inputs to a common scale (TFLite ADD / SUB int8).)doc");

class AddOp : public OpKernel {
 public:
  explicit AddOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, true);
    const char* zps[3] = {"input1_zero_point", "input2_zero_point", "output_zero_point"};
    int* zp_dst[3] = {&zp1_, &zp2_, &zpo_};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr(zps[i], zp_dst[i]));
      CheckZeroPoint(ctx, zps[i], *zp_dst[i]);
    }
    const char* mults[3] = {"input1_multiplier", "input2_multiplier", "output_multiplier"};
    const char* shifts[3] = {"input1_shift", "input2_shift", "output_shift"};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr(mults[i], &m_[i]));
      OP_REQUIRES_OK(ctx, ctx->GetAttr(shifts[i], &s_[i]));
      OP_REQUIRES(ctx, m_[i] >= 0 && s_[i] <= 0 && s_[i] >= -31,
                  errors::InvalidArgument("Expected ", mults[i], " >= 0 and ", shifts[i],
                                          " in [-31, 0] (a multiplier below one). Received: ", m_[i], ", ", s_[i]));
    }
    OP_REQUIRES_OK(ctx, ctx->GetAttr("left_shift", &left_shift_));
    OP_REQUIRES(ctx, left_shift_ >= 0 && left_shift_ <= 22,
                errors::InvalidArgument("Expected left_shift in [0, 22]. Received: ", left_shift_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("subtract", &subtract_));
  }

  void Compute(OpKernelContext* ctx) override {
    BroadcastBinary(ctx, subtract_ ? "Sub" : "Add", [this](int8_t a, int8_t b) {
      const int32_t va = (a - zp1_) * (1 << left_shift_);
      const int32_t vb = (b - zp2_) * (1 << left_shift_);
      const int32_t ra = MultiplyByQuantizedMultiplierSmallerThanOneExp(va, m_[0], s_[0], common_.rounding);
      const int32_t rb = MultiplyByQuantizedMultiplierSmallerThanOneExp(vb, m_[1], s_[1], common_.rounding);
      const int64_t combined = subtract_ ? int64_t{ra} - rb : int64_t{ra} + rb;
      const int32_t raw = MultiplyByQuantizedMultiplierSmallerThanOneExp(WrapInt32(combined), m_[2], s_[2],
                                                                         common_.rounding);
      return ClampToInt8(WrapInt32(int64_t{raw} + zpo_), common_.activation_min, common_.activation_max);
    });
  }

 private:
  Common common_;
  bool subtract_ = false;
  int zp1_ = 0, zp2_ = 0, zpo_ = 0, left_shift_ = 20;
  int m_[3] = {0, 0, 0}, s_[3] = {0, 0, 0};
};

REGISTER_KERNEL_BUILDER(Name("AimetDspAdd").Device(DEVICE_CPU), AddOp);

// ----------------------------------------------------------------------------------------------
// Mul (numpy-style broadcasting)

REGISTER_OP("AimetDspMul")
    .Input("input1: int8")
    .Input("input2: int8")
    .Output("output: int8")
    .Attr("input1_zero_point: int")
    .Attr("input2_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("multiplier: int")
    .Attr("shift: int")
    .Attr("activation_min: int = -128")
    .Attr("activation_max: int = 127")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn([](InferenceContext* c) {
      return ::tensorflow::shape_inference::BroadcastBinaryOpOutputShapeFn(c, 0);
    })
    .Doc(R"doc(Int8 Mul: MBQM((x1 - z1) * (x2 - z2), m, e) + z_y, clamped (TFLite MUL int8).)doc");

class MulOp : public OpKernel {
 public:
  explicit MulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, true);
    const char* zps[3] = {"input1_zero_point", "input2_zero_point", "output_zero_point"};
    int* zp_dst[3] = {&zp1_, &zp2_, &zpo_};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr(zps[i], zp_dst[i]));
      CheckZeroPoint(ctx, zps[i], *zp_dst[i]);
    }
    OP_REQUIRES_OK(ctx, ctx->GetAttr("multiplier", &m_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shift", &e_));
    const int max_shift = common_.rounding == Rounding::kSingle ? 30 : 31;
    OP_REQUIRES(ctx, m_ >= 0 && e_ >= -31 && e_ <= max_shift,
                errors::InvalidArgument("Expected multiplier >= 0 and shift in [-31, ", max_shift, "]. Received: ", m_,
                                        ", ", e_));
  }

  void Compute(OpKernelContext* ctx) override {
    BroadcastBinary(ctx, "Mul", [this](int8_t a, int8_t b) {
      const int32_t product = (a - zp1_) * (b - zp2_);
      const int32_t raw = MultiplyByQuantizedMultiplier(product, m_, e_, common_.rounding);
      return ClampToInt8(WrapInt32(int64_t{raw} + zpo_), common_.activation_min, common_.activation_max);
    });
  }

 private:
  Common common_;
  int zp1_ = 0, zp2_ = 0, zpo_ = 0, m_ = 0, e_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspMul").Device(DEVICE_CPU), MulOp);

// ----------------------------------------------------------------------------------------------
// Batched matrix product ([B, M, K] x [B, K, N]; the Python wrapper transposes and broadcasts)

REGISTER_OP("AimetDspBatchMatMul")
    .Input("lhs: int8")
    .Input("rhs: int8")
    .Output("output: int8")
    .Attr("lhs_zero_point: int")
    .Attr("rhs_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("multiplier: int")
    .Attr("shift: int")
    .Attr("accumulator_bits: int = 32")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle lhs, rhs;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &lhs));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &rhs));
      c->set_output(0, c->MakeShape({c->Dim(lhs, 0), c->Dim(lhs, 1), c->Dim(rhs, 2)}));
      return Status();
    })
    .Doc(R"doc(Int8 batched matrix product: MBQM(sum_k (a - z_l)(b - z_r), m, e) + z_y (TFLite BATCH_MATMUL).)doc");

class BatchMatMulOp : public OpKernel {
 public:
  explicit BatchMatMulOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, true, false);
    const char* zps[3] = {"lhs_zero_point", "rhs_zero_point", "output_zero_point"};
    int* zp_dst[3] = {&zpl_, &zpr_, &zpo_};
    for (int i = 0; i < 3; ++i) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr(zps[i], zp_dst[i]));
      CheckZeroPoint(ctx, zps[i], *zp_dst[i]);
    }
    OP_REQUIRES_OK(ctx, ctx->GetAttr("multiplier", &m_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shift", &e_));
    const int max_shift = common_.rounding == Rounding::kSingle ? 30 : 31;
    OP_REQUIRES(ctx, m_ >= 0 && e_ >= -31 && e_ <= max_shift,
                errors::InvalidArgument("Expected multiplier >= 0 and shift in [-31, ", max_shift, "]. Received: ", m_,
                                        ", ", e_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& lhs = ctx->input(0);
    const Tensor& rhs = ctx->input(1);
    OP_REQUIRES(ctx, lhs.dims() == 3 && rhs.dims() == 3 && lhs.dim_size(0) == rhs.dim_size(0) &&
                         lhs.dim_size(2) == rhs.dim_size(1),
                errors::InvalidArgument("Expected lhs [B, M, K] and rhs [B, K, N]. Received: ",
                                        lhs.shape().DebugString(), " and ", rhs.shape().DebugString()));
    const int64_t batches = lhs.dim_size(0), rows = lhs.dim_size(1), depth = lhs.dim_size(2), cols = rhs.dim_size(2);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batches, rows, cols}), &output));
    const int8_t* a = lhs.flat<int8_t>().data();
    const int8_t* b = rhs.flat<int8_t>().data();
    int8_t* y = output->flat<int8_t>().data();
    for (int64_t n = 0; n < batches; ++n) {
      const int8_t* an = a + n * rows * depth;
      const int8_t* bn = b + n * depth * cols;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          int64_t acc = 0;
          for (int64_t k = 0; k < depth; ++k) {
            acc += int64_t{an[i * depth + k] - zpl_} * (bn[k * cols + j] - zpr_);
          }
          const int32_t raw = MultiplyByQuantizedMultiplier(NarrowAccumulator(acc, common_.wide_accumulator), m_, e_,
                                                            common_.rounding);
          y[(n * rows + i) * cols + j] = ClampToInt8(WrapInt32(int64_t{raw} + zpo_), -128, 127);
        }
      }
    }
  }

 private:
  Common common_;
  int zpl_ = 0, zpr_ = 0, zpo_ = 0, m_ = 0, e_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspBatchMatMul").Device(DEVICE_CPU), BatchMatMulOp);

// ----------------------------------------------------------------------------------------------
// Average / max pooling

Status PoolShape(InferenceContext* c) {
  ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
  std::vector<int32_t> ksize, strides;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("ksize", &ksize));
  TF_RETURN_IF_ERROR(c->GetAttr("strides", &strides));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  if (ksize.size() != 2 || strides.size() != 2) return errors::InvalidArgument("ksize and strides need 2 entries.");
  DimensionHandle dims[2];
  for (int i = 0; i < 2; ++i) {
    DimensionHandle in = c->Dim(input, 1 + i);
    if (!c->ValueKnown(in)) {
      dims[i] = c->UnknownDim();
      continue;
    }
    int64_t out, pad;
    ComputePadding(c->Value(in), ksize[i], strides[i], 1, padding == "SAME", &out, &pad);
    if (out < 1) return errors::InvalidArgument("The pooling window is larger than the input (VALID padding).");
    dims[i] = c->MakeDim(out);
  }
  c->set_output(0, c->MakeShape({c->Dim(input, 0), dims[0], dims[1], c->Dim(input, 3)}));
  return Status();
}

#define AIMET_POOL_ATTRS                                 \
  Attr("ksize: list(int)")                               \
      .Attr("strides: list(int)")                        \
      .Attr("padding: {'SAME', 'VALID'}")                \
      .Attr("activation_min: int = -128")                \
      .Attr("activation_max: int = 127")                 \
      .Attr("rounding: {'double', 'single'} = 'double'")

REGISTER_OP("AimetDspAveragePool2D")
    .Input("input: int8")
    .Output("output: int8")
    .AIMET_POOL_ATTRS
    .SetShapeFn(PoolShape)
    .Doc(R"doc(Int8 average pooling over in-image taps, rounded half away from zero (TFLite AVERAGE_POOL_2D).)doc");

REGISTER_OP("AimetDspMaxPool2D")
    .Input("input: int8")
    .Output("output: int8")
    .AIMET_POOL_ATTRS
    .SetShapeFn(PoolShape)
    .Doc(R"doc(Int8 max pooling (TFLite MAX_POOL_2D).)doc");

template <bool kMax>
class PoolOp : public OpKernel {
 public:
  explicit PoolOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, true);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ksize", &ksize_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides_));
    OP_REQUIRES(ctx, ksize_.size() == 2 && strides_.size() == 2 && ksize_[0] > 0 && ksize_[1] > 0 && strides_[0] > 0 &&
                         strides_[1] > 0,
                errors::InvalidArgument("Expected ksize and strides of two positive ints."));
    std::string padding;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    same_ = padding == "SAME";
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    OP_REQUIRES(ctx, input.dims() == 4,
                errors::InvalidArgument("Expected input [N, H, W, C]. Received: ", input.shape().DebugString()));
    const int64_t n = input.dim_size(0), h = input.dim_size(1), w = input.dim_size(2), c = input.dim_size(3);
    int64_t oh, ow, pt, pl;
    ComputePadding(h, ksize_[0], strides_[0], 1, same_, &oh, &pt);
    ComputePadding(w, ksize_[1], strides_[1], 1, same_, &ow, &pl);
    OP_REQUIRES(ctx, oh >= 1 && ow >= 1,
                errors::InvalidArgument("The pooling window is larger than the input (VALID padding)."));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n, oh, ow, c}), &output));
    const int8_t* x = input.flat<int8_t>().data();
    int8_t* y = output->flat<int8_t>().data();
    std::vector<int32_t> acc(c);
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t oy = 0; oy < oh; ++oy) {
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t iy0 = oy * strides_[0] - pt, ix0 = ox * strides_[1] - pl;
          const int64_t y_start = std::max<int64_t>(0, -iy0), y_end = std::min<int64_t>(ksize_[0], h - iy0);
          const int64_t x_start = std::max<int64_t>(0, -ix0), x_end = std::min<int64_t>(ksize_[1], w - ix0);
          const int64_t count = (y_end - y_start) * (x_end - x_start);
          OP_REQUIRES(ctx, count > 0, errors::InvalidArgument("A pooling window holds no input element."));
          std::fill(acc.begin(), acc.end(), kMax ? -128 : 0);
          for (int64_t ky = y_start; ky < y_end; ++ky) {
            for (int64_t kx = x_start; kx < x_end; ++kx) {
              const int8_t* xp = x + ((b * h + iy0 + ky) * w + ix0 + kx) * c;
              for (int64_t ch = 0; ch < c; ++ch) {
                if (kMax) {
                  acc[ch] = std::max<int32_t>(acc[ch], xp[ch]);
                } else {
                  acc[ch] += xp[ch];
                }
              }
            }
          }
          int8_t* yp = y + ((b * oh + oy) * ow + ox) * c;
          for (int64_t ch = 0; ch < c; ++ch) {
            int32_t v = acc[ch];
            if (!kMax) {
              const int32_t cnt = static_cast<int32_t>(count);
              v = v > 0 ? (v + cnt / 2) / cnt : (v - cnt / 2) / cnt;
            }
            yp[ch] = ClampToInt8(v, common_.activation_min, common_.activation_max);
          }
        }
      }
    }
  }

 private:
  Common common_;
  std::vector<int32_t> ksize_, strides_;
  bool same_ = false;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspAveragePool2D").Device(DEVICE_CPU), PoolOp<false>);
REGISTER_KERNEL_BUILDER(Name("AimetDspMaxPool2D").Device(DEVICE_CPU), PoolOp<true>);

// ----------------------------------------------------------------------------------------------
// Requantize (int8 -> int8), Quantize (float -> int8), Dequantize (int8 -> float)

REGISTER_OP("AimetDspRequantize")
    .Input("input: int8")
    .Output("output: int8")
    .Attr("input_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("multiplier: int")
    .Attr("shift: int")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(y = clamp(MBQM(x - z_x, m, e) + z_y, -128, 127) (TFLite QUANTIZE on int8 input).)doc");

class RequantizeOp : public OpKernel {
 public:
  explicit RequantizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, false);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_zero_point", &input_zp_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_zero_point", &output_zp_));
    CheckZeroPoint(ctx, "input_zero_point", input_zp_);
    CheckZeroPoint(ctx, "output_zero_point", output_zp_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("multiplier", &multiplier_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shift", &shift_));
    const int max_shift = common_.rounding == Rounding::kSingle ? 30 : 31;
    OP_REQUIRES(ctx, multiplier_ >= 0 && shift_ >= -31 && shift_ <= max_shift,
                errors::InvalidArgument("Expected multiplier >= 0 and shift in [-31, ", max_shift,
                                        "]. Received: ", multiplier_, ", ", shift_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    const int8_t* x = input.flat<int8_t>().data();
    int8_t* y = output->flat<int8_t>().data();
    for (int64_t i = 0; i < input.NumElements(); ++i) {
      const int32_t v = MultiplyByQuantizedMultiplier(x[i] - input_zp_, multiplier_, shift_, common_.rounding);
      y[i] = ClampToInt8(WrapInt32(int64_t{v} + output_zp_), -128, 127);
    }
  }

 private:
  Common common_;
  int input_zp_ = 0, output_zp_ = 0, multiplier_ = 0, shift_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspRequantize").Device(DEVICE_CPU), RequantizeOp);

REGISTER_OP("AimetDspQuantize")
    .Input("input: float")
    .Output("output: int8")
    .Attr("scale: float")
    .Attr("zero_point: int")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(y = clamp(round(x / s) + z, -128, 127), float32 division, ties away from zero.)doc");

class QuantizeOp : public OpKernel {
 public:
  explicit QuantizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("zero_point", &zp_));
    OP_REQUIRES(ctx, scale_ > 0.0f && std::isfinite(scale_),
                errors::InvalidArgument("Expected a positive finite scale. Received: ", scale_));
    CheckZeroPoint(ctx, "zero_point", zp_);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    const float* x = input.flat<float>().data();
    int8_t* y = output->flat<int8_t>().data();
    for (int64_t i = 0; i < input.NumElements(); ++i) {
      const float r = std::round(x[i] / scale_);
      // Clamp in float first so that huge values and NaN cannot overflow the int conversion.
      const float clamped = std::isnan(r) ? 0.0f : std::min(std::max(r, -1024.0f), 1024.0f);
      y[i] = ClampToInt8(static_cast<int32_t>(clamped) + zp_, -128, 127);
    }
  }

 private:
  float scale_ = 1.0f;
  int zp_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspQuantize").Device(DEVICE_CPU), QuantizeOp);

REGISTER_OP("AimetDspDequantize")
    .Input("input: int8")
    .Output("output: float")
    .Attr("scale: float")
    .Attr("zero_point: int")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(y = float32(double(s) * (x - z)).)doc");

class DequantizeOp : public OpKernel {
 public:
  explicit DequantizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("zero_point", &zp_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    const int8_t* x = input.flat<int8_t>().data();
    float* y = output->flat<float>().data();
    const double scale = scale_;
    for (int64_t i = 0; i < input.NumElements(); ++i) y[i] = static_cast<float>(scale * (x[i] - zp_));
  }

 private:
  float scale_ = 1.0f;
  int zp_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspDequantize").Device(DEVICE_CPU), DequantizeOp);

// ----------------------------------------------------------------------------------------------
// Softmax (int8 in, int8 out with scale 1/256 and zero point -128)

REGISTER_OP("AimetDspSoftmax")
    .Input("input: int8")
    .Output("output: int8")
    .Attr("input_multiplier: int")
    .Attr("input_left_shift: int")
    .Attr("diff_min: int")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape)
    .Doc(R"doc(Int8 softmax over the last axis with gemmlowp fixed-point exp (TFLite reference kernel).)doc");

class SoftmaxOp : public OpKernel {
 public:
  explicit SoftmaxOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, false);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_multiplier", &multiplier_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_left_shift", &left_shift_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("diff_min", &diff_min_));
    OP_REQUIRES(ctx, multiplier_ >= 0 && left_shift_ >= 0 && left_shift_ <= 31 && diff_min_ <= 0,
                errors::InvalidArgument("Expected input_multiplier >= 0, input_left_shift in [0, 31], diff_min <= 0. "
                                        "Received: ",
                                        multiplier_, ", ", left_shift_, ", ", diff_min_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    OP_REQUIRES(ctx, input.dims() >= 1 && input.dim_size(input.dims() - 1) > 0,
                errors::InvalidArgument("Expected a non-empty last axis. Received: ", input.shape().DebugString()));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    const int64_t depth = input.dim_size(input.dims() - 1);
    const int64_t rows = input.NumElements() / depth;
    const int8_t* x = input.flat<int8_t>().data();
    int8_t* y = output->flat<int8_t>().data();
    std::vector<int32_t> exps(depth);
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* xr = x + r * depth;
      int32_t max_in_row = -128;
      for (int64_t c = 0; c < depth; ++c) max_in_row = std::max<int32_t>(max_in_row, xr[c]);
      int32_t sum_of_exps = 0;  // Q12.19
      for (int64_t c = 0; c < depth; ++c) {
        const int32_t diff = xr[c] - max_in_row;
        if (diff >= diff_min_) {
          const int32_t scaled = MultiplyByQuantizedMultiplierGreaterThanOne(diff, multiplier_, left_shift_,
                                                                              common_.rounding);
          exps[c] = ExpOnNegativeValues(scaled, 5);
          sum_of_exps = WrapInt32(int64_t{sum_of_exps} + RoundingDivideByPot(exps[c], 12));
        }
      }
      OP_REQUIRES(ctx, sum_of_exps > 0, errors::Internal("Softmax: sum of exponentials is not positive."));
      int bits_over_unit;
      const int32_t reciprocal = GetReciprocal(sum_of_exps, 12, &bits_over_unit);
      const int exponent = bits_over_unit + 31 - 8;
      OP_REQUIRES(ctx, exponent >= 0 && exponent <= 31,
                  errors::InvalidArgument("Softmax: rescaling exponent ", exponent, " outside [0, 31]."));
      for (int64_t c = 0; c < depth; ++c) {
        const int32_t diff = xr[c] - max_in_row;
        if (diff >= diff_min_) {
          const int32_t v = RoundingDivideByPot(SaturatingRoundingDoublingHighMul(reciprocal, exps[c]), exponent) - 128;
          y[r * depth + c] = ClampToInt8(v, -128, 127);
        } else {
          y[r * depth + c] = -128;
        }
      }
    }
  }

 private:
  Common common_;
  int multiplier_ = 0, left_shift_ = 0, diff_min_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspSoftmax").Device(DEVICE_CPU), SoftmaxOp);

// ----------------------------------------------------------------------------------------------
// Mean over axes (TFLite MEAN reference kernel, int8)

REGISTER_OP("AimetDspMean")
    .Input("input: int8")
    .Output("output: int8")
    .Attr("axes: list(int)")
    .Attr("keep_dims: bool = false")
    .Attr("input_zero_point: int")
    .Attr("output_zero_point: int")
    .Attr("multiplier: int")
    .Attr("shift: int")
    .Attr("rounding: {'double', 'single'} = 'double'")
    .SetShapeFn([](InferenceContext* c) {
      std::vector<int32_t> axes;
      bool keep_dims;
      TF_RETURN_IF_ERROR(c->GetAttr("axes", &axes));
      TF_RETURN_IF_ERROR(c->GetAttr("keep_dims", &keep_dims));
      if (!c->RankKnown(c->input(0))) {
        c->set_output(0, c->UnknownShape());
        return Status();
      }
      const int rank = c->Rank(c->input(0));
      std::vector<bool> reduced(rank);
      for (int a : axes) {
        if (a < -rank || a >= rank) return errors::InvalidArgument("Mean axis ", a, " out of range for rank ", rank);
        reduced[(a + rank) % rank] = true;
      }
      std::vector<DimensionHandle> dims;
      for (int i = 0; i < rank; ++i) {
        if (!reduced[i]) {
          dims.push_back(c->Dim(c->input(0), i));
        } else if (keep_dims) {
          dims.push_back(c->MakeDim(1));
        }
      }
      c->set_output(0, c->MakeShape(dims));
      return Status();
    })
    .Doc(R"doc(Int8 mean over axes with the count folded into the requantize multiplier.)doc");

class MeanOp : public OpKernel {
 public:
  explicit MeanOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadCommon(ctx, &common_, false, false);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axes", &axes_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("keep_dims", &keep_dims_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("input_zero_point", &input_zp_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_zero_point", &output_zp_));
    CheckZeroPoint(ctx, "input_zero_point", input_zp_);
    CheckZeroPoint(ctx, "output_zero_point", output_zp_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("multiplier", &multiplier_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shift", &shift_));
    OP_REQUIRES(ctx, multiplier_ >= 0 && shift_ >= -31 && shift_ <= 31,
                errors::InvalidArgument("Expected multiplier >= 0 and shift in [-31, 31]. Received: ", multiplier_,
                                        ", ", shift_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const int rank = input.dims();
    std::vector<bool> reduced(rank);
    for (int a : axes_) {
      OP_REQUIRES(ctx, a >= -rank && a < rank,
                  errors::InvalidArgument("Mean axis ", a, " out of range for input ", input.shape().DebugString()));
      reduced[(a + rank) % rank] = true;
    }
    TensorShape out_shape;
    std::vector<int64_t> out_strides(rank, 0);
    int64_t count = 1;
    for (int i = 0; i < rank; ++i) {
      if (reduced[i]) {
        count *= input.dim_size(i);
        if (keep_dims_) out_shape.AddDim(1);
      } else {
        out_shape.AddDim(input.dim_size(i));
      }
    }
    OP_REQUIRES(ctx, count > 0, errors::InvalidArgument("Mean over an empty axis."));
    int64_t stride = 1;
    for (int i = rank - 1; i >= 0; --i) {
      if (!reduced[i]) {
        out_strides[i] = stride;
        stride *= input.dim_size(i);
      }
    }
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &output));
    std::vector<int64_t> sums(output->NumElements(), 0);
    const int8_t* x = input.flat<int8_t>().data();
    std::vector<int64_t> index(rank, 0);
    int64_t out_offset = 0;
    for (int64_t i = 0; i < input.NumElements(); ++i) {
      sums[out_offset] += x[i];
      for (int d = rank - 1; d >= 0; --d) {
        ++index[d];
        out_offset += out_strides[d];
        if (index[d] < input.dim_size(d)) break;
        out_offset -= out_strides[d] * index[d];
        index[d] = 0;
      }
    }
    // Fold 1/count into (multiplier, shift) as TFLite does: k = min(floor(log2 count), 32, 31 + shift).
    int k = 63 - __builtin_clzll(static_cast<uint64_t>(count));
    k = std::min(k, 32);
    k = std::min(k, 31 + shift_);
    const int32_t m = static_cast<int32_t>((static_cast<int64_t>(multiplier_) << k) / count);
    const int e = shift_ - k;
    int8_t* y = output->flat<int8_t>().data();
    for (int64_t i = 0; i < output->NumElements(); ++i) {
      const int32_t shifted = WrapInt32(sums[i] - static_cast<int64_t>(input_zp_) * count);
      y[i] = ClampToInt8(WrapInt32(int64_t{MultiplyByQuantizedMultiplier(shifted, m, e, common_.rounding)} + output_zp_),
                         -128, 127);
    }
  }

 private:
  Common common_;
  std::vector<int32_t> axes_;
  bool keep_dims_ = false;
  int input_zp_ = 0, output_zp_ = 0, multiplier_ = 0, shift_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("AimetDspMean").Device(DEVICE_CPU), MeanOp);

}  // namespace aimet_dsp
