// A test communicator that only has a size and a rank: enough to build a model, its optimizer or
// a pipeline stage as one rank of a layout, in one process. Any collective fails the test.
#pragma once
#include <string>
#include <vector>

#include "ltrain/core/check.h"
#include "ltrain/parallel/communicator.h"

namespace ltrain::test {

// A member of a group of `size` ranks whose collectives are never called while building a model
// and its optimizer.
class SizeOnlyCommunicator final : public Communicator {
 public:
  SizeOnlyCommunicator(int size, int rank) : size_(size), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "size-only"; }
  void all_reduce_sum(Tensor) override { fail(); }
  void all_reduce_max(Tensor) override { fail(); }
  void reduce_scatter_sum(Tensor, const Tensor&) override { fail(); }
  void all_gather(Tensor, const Tensor&) override { fail(); }
  void broadcast(Tensor, int) override { fail(); }
  int send_recv_start(const std::vector<P2p>&) override {
    fail();
    return 0;
  }
  int all_reduce_sum_start(Tensor) override {
    fail();
    return 0;
  }
  void wait(int) override { fail(); }
  double sum(double) override {
    fail();
    return 0;
  }
  double max(double) override {
    fail();
    return 0;
  }
  void barrier() override { fail(); }

 private:
  static void fail() { LTRAIN_CHECK(false, "SizeOnlyCommunicator has no collectives"); }
  int size_, rank_;
};

}  // namespace ltrain::test
