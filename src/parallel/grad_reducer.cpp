#include "ltrain/parallel/grad_reducer.h"

#include "ltrain/core/backend.h"
#include "ltrain/core/check.h"

namespace ltrain {

GradReducer::GradReducer(ParameterSet& params, Communicator& comm, double bucket_mb)
    : params_(params), comm_(comm) {
  const Tensor g = params.grad_buffer();
  const int64_t min_elems = std::max<int64_t>(1, int64_t(bucket_mb * 1048576.0 / double(dtype_size(g.dtype))));
  Bucket cur{-1, 0, 0};
  for (int u = 0; u < params.num_grad_units(); ++u) {
    auto [b, e] = params.grad_unit_range(u);
    if (cur.last_unit < 0) cur = Bucket{u, b, e};
    LTRAIN_CHECK(e == cur.begin || cur.last_unit == u, "gradient units must be adjacent in backward order");
    cur.begin = std::min(cur.begin, b);
    cur.last_unit = u;
    if (cur.end - cur.begin >= min_elems || u + 1 == params.num_grad_units()) {
      buckets_.push_back(cur);
      cur = Bucket{-1, 0, 0};
    }
  }
  params_.set_grad_ready_hook([this](int unit) { on_unit_ready(unit); });
}

GradReducer::~GradReducer() { params_.set_grad_ready_hook(nullptr); }

void GradReducer::start(Bucket& b) {
  // The device work that produced these gradients must come first: NCCL orders itself after the
  // backend's stream with an event; any other communicator reads after a host synchronization.
  if (!comm_.orders_after_device_work()) params_.backend().synchronize();
  b.ticket = comm_.all_reduce_sum_start(flat_range(params_.grad_buffer(), b.begin, b.end - b.begin));
}

void GradReducer::on_unit_ready(int unit) {
  if (!armed_) return;
  for (auto& b : buckets_)
    if (b.last_unit == unit && b.ticket < 0) start(b);
}

void GradReducer::finish() {
  for (auto& b : buckets_)
    if (b.ticket < 0) start(b);  // never armed this step
  for (auto& b : buckets_) {
    comm_.wait(b.ticket);
    b.ticket = -1;
  }
  armed_ = false;
}

}  // namespace ltrain
