#include "ltrain/train/fault_injection.h"

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "ltrain/core/backend.h"

namespace ltrain {

namespace {

// r@k: world rank r at step k.
void parse_rank_at_step(const char* var, int& rank, int& step) {
  if (const char* v = std::getenv(var)) {
    int r = -1, k = -1;
    if (std::sscanf(v, "%d@%d", &r, &k) == 2) rank = r, step = k;
  }
}

int env_step(const char* var) {
  const char* v = std::getenv(var);
  return v ? std::atoi(v) : 0;  // steps start at 1: 0 never matches
}

}  // namespace

FaultInjection FaultInjection::from_env(int world_rank) {
  FaultInjection f;
  f.world_rank_ = world_rank;
  f.nan_step_ = env_step("LTRAIN_TEST_NAN_AT_STEP");
  if (const char* v = std::getenv("LTRAIN_TEST_SPIKE_STEPS")) {
    int a = 0, b = 0;
    char rounds[16] = "0";
    if (std::sscanf(v, "%d-%d,%15s", &a, &b, rounds) >= 2) {
      f.spike_from_ = a;
      f.spike_to_ = b;
      f.spike_always_ = std::string(rounds) == "inf";
      f.spike_rounds_ = std::atoi(rounds);
    }
  }
  parse_rank_at_step("LTRAIN_TEST_PERTURB_RANK", f.perturb_.rank, f.perturb_.step);
  parse_rank_at_step("LTRAIN_TEST_HANG_RANK", f.hang_.rank, f.hang_.step);
  parse_rank_at_step("LTRAIN_TEST_DISK_FULL", f.disk_full_.rank, f.disk_full_.step);
  f.stop_step_ = env_step("LTRAIN_TEST_STOP_AT_STEP");
  f.kill_step_ = env_step("LTRAIN_TEST_KILL_DURING_SAVE");
  return f;
}

void FaultInjection::after_backward(const ParameterSet& params, int step, int rollbacks) {
  Backend& be = params.backend();
  auto scale_grads = [&](double factor) {
    std::vector<double> g(size_t(params.grad_buffer().numel()));
    be.to_host(g.data(), DType::kF64, params.grad_buffer());
    for (auto& x : g) x *= factor;
    be.from_host(params.grad_buffer(), g.data(), DType::kF64);
  };
  if (nan_step_ > 0 && nan_step_ == step && !nan_done_) {
    nan_done_ = true;
    scale_grads(NAN);
  }
  if (step >= spike_from_ && step <= spike_to_ && (spike_always_ || rollbacks <= spike_rounds_)) scale_grads(1000.0);
  if (hang_.rank == world_rank_ && hang_.step == step) std::this_thread::sleep_for(std::chrono::seconds(60));
  if (perturb_.rank == world_rank_ && perturb_.step == step) {
    Tensor p = params.param_buffer();
    p.shape = Shape{1};
    const double one = 1.0;
    be.from_host(p, &one, DType::kF64);
  }
}

SaveHooks FaultInjection::save_hooks() const {
  SaveHooks hooks;
  hooks.between_files = [kill = kill_step_](int step) {
    if (kill > 0 && kill == step) std::raise(SIGKILL);
  };
  hooks.fail_write = [full = disk_full_, rank = world_rank_](int step) {
    return full.rank == rank && full.step == step;
  };
  return hooks;
}

}  // namespace ltrain
