// Faults for the tests, read once from the environment and inert unless their variable is set.
// Every LTRAIN_TEST_* hook of the production code is here:
//   LTRAIN_TEST_NAN_AT_STEP=k       a NaN in the gradients on the first attempt of step k
//   LTRAIN_TEST_SPIKE_STEPS=a-b[,x] gradients x1000 at every attempt of steps a..b, in the first x+1
//                                   rounds (x rollbacks; default 0; "inf" = always)
//   LTRAIN_TEST_PERTURB_RANK=r@k    world rank r nudges one weight after step k's backward
//   LTRAIN_TEST_HANG_RANK=r@k       world rank r stalls for 60 s after step k's backward
//   LTRAIN_TEST_STOP_AT_STEP=k      behave as if SIGTERM arrived during step k (deterministic,
//                                   unlike a real signal)
//   LTRAIN_TEST_KILL_DURING_SAVE=k  die between two files of the save of step k, as a kill -9 or a
//                                   node failure during a save would
//   LTRAIN_TEST_DISK_FULL=r@k       world rank r's moments file of the save of step k fails in the
//                                   middle of its write with ENOSPC, as on a full disk
// Used by tests/scripts/test_guard_cli.sh, test_resume_cli.sh, test_parallel_cli.sh,
// test_blend_cli.sh and test_checkpoint_cleanup_cli.sh.
#pragma once
#include <string>

#include "ltrain/checkpoint/checkpoint.h"
#include "ltrain/core/param_set.h"

namespace ltrain {

class FaultInjection {
 public:
  static FaultInjection from_env(int world_rank);

  // After step `step`'s backward (TrainStep's after-backward hook); rollbacks: how many the run
  // has made so far.
  void after_backward(const ParameterSet& params, int step, int rollbacks);
  // Whether step `step` should stop the run as a signal would.
  bool stop_at(int step) const { return stop_step_ > 0 && stop_step_ == step; }
  // The hooks of this rank's save (checkpoint's SaveHooks).
  SaveHooks save_hooks() const;

 private:
  struct RankAtStep {
    int rank = -1, step = -1;
  };
  int world_rank_ = 0;
  int nan_step_ = 0;
  bool nan_done_ = false;
  int spike_from_ = 0, spike_to_ = -1;  // an empty range when unset
  bool spike_always_ = false;
  int spike_rounds_ = 0;
  RankAtStep perturb_, hang_, disk_full_;
  int stop_step_ = 0, kill_step_ = 0;
};

}  // namespace ltrain
