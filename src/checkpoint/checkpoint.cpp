// The save/load protocol of checkpoints: saving (every rank its shard files, rank 0 the manifest
// last, then the rename and `latest`), opening and verifying, finding the newest valid one,
// pruning, and loading. The manifest is manifest.cpp's, the shard files shard_io.cpp's.
#include "ltrain/checkpoint/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/manifest.h"
#include "checkpoint/shard_io.h"
#include "ltrain/core/backend.h"
#include "ltrain/core/check.h"
#include "ltrain/core/io.h"

namespace ltrain {

using namespace ckpt;

namespace {

// Removes and recreates step_NNNNNNNN.tmp; returns {root, tmp dir, final dir}.
struct SaveDirs {
  std::string root, tmp, final_dir;
};
SaveDirs save_dirs(const std::string& run_dir, int step) {
  SaveDirs d;
  d.root = path_join(run_dir, "checkpoints");
  d.final_dir = path_join(d.root, step_dir_name(step));
  d.tmp = d.final_dir + ".tmp";
  return d;
}
void start_save(const SaveDirs& d) {
  make_dirs(d.root);
  remove_tree(d.tmp);
  make_dirs(d.tmp);
}

// Rank 0, once every rank's files are written: the tokenizer, meta.json (shards: every rank's
// file entries, in rank order), then the directory's rename and `latest`.
std::string finish_save(const SaveDirs& d, int step, nlohmann::json meta,
                        const std::vector<nlohmann::json>& rank_entries, const std::string& tokenizer_path) {
  nlohmann::json shards = nlohmann::json::array(), files = nlohmann::json::object(),
                 writers = nlohmann::json::array();
  for (const auto& entries : rank_entries) {
    for (auto e : entries) {
      if (writers.empty() || writers.back() != e["rank"]) writers.push_back(e["rank"]);
      files[e["file"].get<std::string>()] = {{"bytes", e["bytes"]}, {"crc32", e["crc32"]}};
      e.erase("bytes");
      e.erase("crc32");
      shards.push_back(std::move(e));
    }
  }
  meta["layout"]["writers"] = writers;
  if (!tokenizer_path.empty() && file_exists(tokenizer_path)) {
    const std::string tok = read_text_file(tokenizer_path);
    write_file_atomic(path_join(d.tmp, "tokenizer.model"), tok.data(), tok.size());
    files["tokenizer.model"] = {{"bytes", tok.size()}, {"crc32", crc32(tok.data(), tok.size())}};
    meta["tokenizer"] = "tokenizer.model";
  }
  meta["shards"] = std::move(shards);
  meta["files"] = std::move(files);
  write_text_file_atomic(path_join(d.tmp, "meta.json"), meta.dump(2) + "\n");
  fsync_directory(d.tmp);
  replace_directory(d.tmp, d.final_dir);
  write_text_file_atomic(path_join(d.root, "latest"), step_dir_name(step) + "\n");
  fsync_directory(d.root);
  return d.final_dir;
}

// Every rank's string, in rank order (host collectives: lengths, then padded int32 words).
std::vector<std::string> all_gather_strings(Communicator& c, const std::string& mine) {
  if (c.size() == 1) return {mine};
  const int64_t words = int64_t(c.max(double((mine.size() + 3) / 4 + 1)));
  std::vector<int32_t> send(size_t(words), 0), all(size_t(words) * size_t(c.size()));
  send[0] = int32_t(mine.size());
  std::memcpy(send.data() + 1, mine.data(), mine.size());
  c.all_gather(Tensor{all.data(), DType::kI32, Shape{words * c.size()}}, Tensor{send.data(), DType::kI32, Shape{words}});
  std::vector<std::string> out;
  for (int r = 0; r < c.size(); ++r) {
    const int32_t* w = all.data() + size_t(words) * size_t(r);
    out.emplace_back(reinterpret_cast<const char*>(w + 1), size_t(w[0]));
  }
  return out;
}

// What one rank of a save writes: its pieces of the weights and of the moments.
struct RankPieces {
  bool writes = false;  // this rank writes shard files
  nlohmann::json who;   // {rank, data_rank, tensor_rank}
  std::vector<PieceSource> weights, moments;
};

// One phase of a save ends here on every rank, with its error ("" for none): a collective over
// `world`, so every rank has stopped writing when it returns. When any rank failed, rank 0 removes
// the partial directory and every rank throws the same UserError, naming the first failing rank;
// the gather of what rank 0 did keeps the others from ending the job before it is done.
void end_phase(Communicator& world, const SaveDirs& d, int step, const std::string& error) {
  const std::vector<std::string> errors = all_gather_strings(world, error);
  const auto bad = std::find_if(errors.begin(), errors.end(), [](const std::string& e) { return !e.empty(); });
  if (bad == errors.end()) return;
  std::string cleanup;
  if (world.rank() == 0 && is_directory(d.tmp)) {
    remove_tree(d.tmp);
    cleanup = (is_directory(d.tmp) ? "; could not remove the partial '" : "; removed the partial '") + d.tmp + "'";
  }
  cleanup = all_gather_strings(world, cleanup)[0];
  const std::string who = world.size() > 1 ? " on rank " + std::to_string(bad - errors.begin()) : "";
  user_error("saving the checkpoint of step ", step, " failed", who, ": ", *bad, cleanup,
             " (the earlier checkpoints are intact: free space and resume with --resume auto)");
}

// This rank's part of a save phase: its error message, "" when it succeeded.
std::string attempt(const std::function<void()>& part) {
  try {
    part();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// The manifest of a save (all but its files and shards, which finish_save adds).
nlohmann::json manifest_of(const TrainState& state, const Config& cfg, const std::vector<ManifestTensor>& tensors,
                           const nlohmann::json& layout, bool with_moments) {
  nlohmann::json meta = manifest_head(state, cfg);
  int64_t num_params = 0;
  for (const auto& t : tensors) num_params += t.shape.numel();
  meta["num_params"] = num_params;
  for (const auto& [key, value] : layout.items()) meta["layout"][key] = value;
  meta["tensors"] = tensor_list(tensors, "");
  if (with_moments) {
    nlohmann::json opt = tensor_list(tensors, ".exp_avg");
    for (auto& e : tensor_list(tensors, ".exp_avg_sq")) opt.push_back(e);
    meta["optimizer"] = std::move(opt);
  }
  return meta;
}

// The save both save_checkpoint overloads share: collective over `world`. Every writing rank
// writes model_RRRRR.bin and (with_moments) optim_RRRRR.bin; rank 0 lists `tensors` (their global
// shapes and split dimensions) in the manifest, with `layout` added to its layout, and finishes.
// Three phases, each ended together by every rank (end_phase).
std::string write_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                             Communicator& world, const RankPieces& mine, bool with_moments,
                             const std::vector<ManifestTensor>& tensors, const nlohmann::json& layout,
                             const std::string& tokenizer_path, const SaveHooks& hooks) {
  const int rank = world.rank();
  const SaveDirs d = save_dirs(run_dir, state.step);
  // 1. Rank 0 makes the directory, before anyone writes into it.
  end_phase(world, d, state.step, attempt([&] {
    if (rank == 0) start_save(d);
  }));
  // 2. Every writing rank writes its files.
  nlohmann::json files = nlohmann::json::array();
  end_phase(world, d, state.step, attempt([&] {
    if (mine.writes) files.push_back(write_shard_file(d.tmp, rank_file_name("model", rank), mine.weights, mine.who));
    if (hooks.between_files) hooks.between_files(state.step);
    if (mine.writes && with_moments)
      files.push_back(write_shard_file(d.tmp, rank_file_name("optim", rank), mine.moments, mine.who,
                                       hooks.fail_write && hooks.fail_write(state.step)));
  }));
  // 3. Every rank's files are complete: rank 0 writes the manifest, renames, updates `latest`.
  const std::vector<std::string> all = all_gather_strings(world, files.dump());
  end_phase(world, d, state.step, attempt([&] {
    if (rank != 0) return;
    std::vector<nlohmann::json> entries;
    for (const auto& s : all) entries.push_back(nlohmann::json::parse(s));
    finish_save(d, state.step, manifest_of(state, cfg, tensors, layout, with_moments), entries, tokenizer_path);
  }));
  return d.final_dir;  // complete on every rank
}

// Checks the parameters (plus `suffix`) against a section's tensors; returns name -> entry.
std::map<std::string, const TensorEntry*> match_params(const std::vector<TensorEntry>& entries,
                                                      const ParameterSet& params, const std::string& suffix,
                                                      const std::string& meta_path) {
  std::map<std::string, const TensorEntry*> by_name, out;
  for (const auto& e : entries) by_name[e.name] = &e;
  for (const auto& p : params.params()) {
    const std::string name = p.name + suffix;
    auto it = by_name.find(name);
    if (it == by_name.end()) user_error(meta_path, ": tensor '", name, "' is missing");
    if (!(it->second->shape == p.global_shape))
      user_error(meta_path, ": tensor '", name, "' has shape ", it->second->shape.str(), " but the model needs ",
                 p.global_shape.str());
    out[p.name] = it->second;
  }
  return out;
}

// This rank's slice of every parameter (plus `suffix`) in a section, one tensor at a time, after
// every tensor's name and shape are checked: use(p, values of p's local slice).
void for_each_local_slice(const CheckpointInfo& info, FileReader& files, const char* section,
                          const std::string& suffix, const ParameterSet& params,
                          const std::function<void(const NamedTensor&, const std::vector<float>&)>& use) {
  const std::vector<TensorEntry> entries = parse_section(info, section);
  const auto by_name = match_params(entries, params, suffix, path_join(info.dir, "meta.json"));
  for (const auto& p : params.params()) {
    const std::vector<float> part = read_slice(files, *by_name.at(p.name), params.local_slice(p));
    LTRAIN_CHECK(int64_t(part.size()) == p.tensor.numel(), "checkpoint slice of " << p.name);
    use(p, part);
  }
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            ShardedState& sharded, Communicator& world, const std::string& tokenizer_path,
                            const SaveHooks& hooks) {
  const ParameterSet& params = sharded.parameters();
  const int P = params.tensor_parallel_size(), t_rank = params.tensor_parallel_rank();
  const int PP = std::max(1, cfg.parallel.pipeline);
  const int rank = world.rank();
  // The grid's order: world rank = (data rank x PP + stage) x P + tensor rank.
  LTRAIN_CHECK(world.size() % (P * PP) == 0 && rank % P == t_rank,
               "world rank " << rank << " is not (data rank x " << PP << " + stage) x " << P << " + tensor rank " << t_rank);
  const int d_rank = rank / (P * PP), stage = rank / P % PP;
  const bool zero = sharded.zero();
  const int64_t lo = sharded.shard_begin(), n = sharded.shard_size();
  LTRAIN_CHECK(!zero || lo == int64_t(d_rank) * n, "the ZeRO shard does not belong to data rank " << d_rank);
  RankPieces mine;
  // Without ZeRO the data-parallel replicas are identical: data rank 0 of each tensor group writes.
  mine.writes = zero || d_rank == 0;
  mine.who = {{"rank", rank}, {"data_rank", d_rank}, {"tensor_rank", t_rank}};
  if (PP > 1) mine.who["pipeline_rank"] = stage;
  std::vector<float> w, m, v;
  if (mine.writes) {
    w.resize(size_t(n));
    m.resize(size_t(n));
    v.resize(size_t(n));
    sharded.export_shard(w.data(), m.data(), v.data());
    // This rank's element range [lo, lo + n) of the flat layout, cut along the tensors. A
    // replicated tensor (a norm) is identical on every tensor rank: tensor rank 0 writes it.
    for (int which = 0; which < 3; ++which)
      for (const auto& p : params.params()) {
        if (p.shard_dim < 0 && t_rank != 0) continue;
        if (p.tied_copy) continue;  // the first stage writes the embedding
        const int64_t off = params.offset(p), b = std::max(lo, off), e = std::min(lo + n, off + p.tensor.numel());
        if (b >= e) continue;
        const float* src = (which == 0 ? w : which == 1 ? m : v).data() + (b - lo);
        const char* suffix = which == 0 ? "" : which == 1 ? ".exp_avg" : ".exp_avg_sq";
        (which == 0 ? mine.weights : mine.moments).push_back({p.name + suffix, params.local_slice(p), b - off, e - off, src});
      }
  }
  std::vector<ManifestTensor> tensors;
  for (size_t i = 0; i < params.params().size(); ++i) {
    const NamedTensor& p = params.params()[i];
    if (!p.tied_copy) tensors.push_back({p.name, p.global_shape, p.shard_dim, p.order >= 0 ? p.order : int(i)});
  }
  if (PP > 1) {
    // Each stage holds some of the tensors: the manifest lists all of them, in the model's order.
    nlohmann::json mine_list = nlohmann::json::array();
    for (const auto& t : tensors) mine_list.push_back({t.name, shape_json(t.shape), t.split_dim, t.order});
    std::map<int, ManifestTensor> all;
    for (const auto& s : all_gather_strings(world, mine_list.dump()))
      for (const auto& e : nlohmann::json::parse(s)) {
        Shape shape;
        shape.ndim = int(e[1].size());
        for (int k = 0; k < shape.ndim; ++k) shape.dims[k] = e[1][size_t(k)].get<int64_t>();
        all[e[3].get<int>()] = {e[0].get<std::string>(), shape, e[2].get<int>(), e[3].get<int>()};
      }
    tensors.clear();
    for (auto& [order, t] : all) tensors.push_back(t);
  }
  nlohmann::json layout = {
      {"data", world.size() / (P * PP)},
      {"tensor", P},
      {"zero", zero ? 1 : 0},
      {"writer_rule", zero ? "every rank: ZeRO-1 shards the master weights and moments over the data ranks"
                           : "data rank 0 of each tensor-parallel group: the data-parallel replicas hold identical copies"}};
  if (PP > 1) {  // (absent: 1, as in checkpoints before pipeline parallelism)
    layout["pipeline"] = PP;
    layout["writer_rule"] = zero ? "every rank: ZeRO-1 shards the master weights and moments over the data ranks; "
                                   "each pipeline stage writes its layers"
                                 : "data rank 0 of each pipeline stage's tensor-parallel group: each stage writes its "
                                   "layers, the data-parallel replicas hold identical copies";
  }
  return write_checkpoint(run_dir, state, cfg, world, mine, /*with_moments=*/true, tensors, layout, tokenizer_path,
                          hooks);
}

std::string save_checkpoint(const std::string& run_dir, const TrainState& state, const Config& cfg,
                            const std::vector<HostTensor>& weights, const std::vector<HostTensor>* exp_avg,
                            const std::vector<HostTensor>* exp_avg_sq, const std::string& tokenizer_path,
                            const SaveHooks& hooks) {
  RankPieces mine;
  mine.writes = true;
  mine.who = {{"rank", 0}, {"data_rank", 0}, {"tensor_rank", 0}};
  auto whole = [](const std::vector<HostTensor>& ts, const char* suffix, std::vector<PieceSource>& out) {
    for (const auto& t : ts) {
      LTRAIN_CHECK(int64_t(t.data.size()) == t.shape.numel(), "tensor " << t.name);
      out.push_back({t.name + suffix, TensorSlice{0, 0, t.shape.dims[0]}, 0, t.shape.numel(), t.data.data()});
    }
  };
  whole(weights, "", mine.weights);
  const bool moments = exp_avg && exp_avg_sq;
  if (moments) {
    whole(*exp_avg, ".exp_avg", mine.moments);
    whole(*exp_avg_sq, ".exp_avg_sq", mine.moments);
  }
  std::vector<ManifestTensor> tensors;
  for (const auto& t : weights) tensors.push_back({t.name, t.shape, -1});
  const std::unique_ptr<Communicator> one = make_single_communicator();
  return write_checkpoint(run_dir, state, cfg, *one, mine, moments, tensors,
                          {{"writer_rule", "one process wrote whole tensors"}}, tokenizer_path, hooks);
}

void verify_checkpoint(const CheckpointInfo& info, int part, int parts) {
  LTRAIN_CHECK(parts >= 1 && part >= 0 && part < parts, "verify part " << part << " of " << parts);
  const std::string meta_path = path_join(info.dir, "meta.json");
  manifest_errors(meta_path, [&] {
    if (!info.meta.contains("files") || !info.meta["files"].is_object())
      user_error(meta_path, ": has no file checksums");
    std::vector<char> buf(size_t(1) << 22);
    int index = -1;
    for (const auto& [name, f] : info.meta["files"].items()) {
      ++index;
      const std::string path = path_join(info.dir, checked_file_name(nlohmann::json(name), meta_path));
      if (!file_exists(path)) user_error("checkpoint file missing: '", path, "'");
      const uint64_t want = uint64_t(get_count(f, "bytes", meta_path)), have = file_size(path);
      if (have != want)
        user_error(path, ": truncated or damaged (", have, " bytes, meta.json says ", want, ")");
      if (index % parts != part) continue;  // another rank reads this one
      std::unique_ptr<FILE, int (*)(FILE*)> in(std::fopen(path.c_str(), "rb"), &std::fclose);
      if (!in) user_error("cannot read checkpoint file '", path, "'");
      uint32_t crc = 0;
      for (size_t got; (got = std::fread(buf.data(), 1, buf.size(), in.get())) > 0;) crc = crc32(buf.data(), got, crc);
      if (std::ferror(in.get())) user_error("cannot read checkpoint file '", path, "'");
      if (crc != f.at("crc32").get<uint32_t>()) user_error(path, ": corrupt: checksum mismatch");
    }
    // Every piece lies in a checksummed file, and the pieces cover every tensor exactly once.
    for (const char* section : {"tensors", "optimizer"}) {
      if (!info.meta.contains(section)) continue;
      for (const TensorEntry& t : parse_section(info, section))
        for (const Piece& p : t.pieces) {
          if (!info.meta["files"].contains(p.file))
            user_error(meta_path, ": tensor '", t.name, "' is in '", p.file, "', which has no checksum in 'files'");
          const uint64_t size = uint64_t(get_count(info.meta["files"][p.file], "bytes", meta_path));
          if (p.offset > size || p.bytes > size - p.offset)
            user_error(path_join(info.dir, p.file), ": truncated or inconsistent (tensor '", t.name, "' needs ",
                       p.bytes, " bytes at offset ", p.offset, ", file has ", size, ")");
        }
    }
  });
}

std::vector<int> list_checkpoint_steps(const std::string& run_dir) {
  std::vector<int> steps;
  const std::string root = path_join(run_dir, "checkpoints");
  if (!is_directory(root)) return steps;
  for (const auto& name : list_directory(root)) {
    int step = -1;
    char tail = 0;
    // step_NNNNNNNN exactly: temporary (.tmp) and moved-aside (.old.*) directories are skipped.
    if (std::sscanf(name.c_str(), "step_%d%c", &step, &tail) == 1 && name.size() == 13 &&
        is_directory(path_join(root, name)))
      steps.push_back(step);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

CheckpointInfo open_verified_checkpoint(const std::string& dir, Communicator& group) {
  // Opening (meta.json, sizes) gives every rank the same result; the CRCs are split.
  CheckpointInfo info = open_checkpoint(dir);
  bool ok = true;
  try {
    verify_checkpoint(info, group.rank(), group.size());
  } catch (const UserError&) {
    ok = false;
  }
  if (group.max(ok ? 0.0 : 1.0) > 0) {
    verify_checkpoint(info);  // every rank names the same first bad file
    user_error(dir, ": a checkpoint file failed verification");  // not reached unless the disk changed
  }
  return info;
}

std::optional<CheckpointInfo> find_latest_valid_checkpoint(const std::string& run_dir,
                                                           std::vector<std::string>* warnings,
                                                           Communicator* group) {
  for (int step : list_checkpoint_steps(run_dir)) {
    const std::string dir = path_join(path_join(run_dir, "checkpoints"), step_dir_name(step));
    try {
      if (group) return open_verified_checkpoint(dir, *group);
      CheckpointInfo info = open_checkpoint(dir);
      verify_checkpoint(info);
      return info;
    } catch (const UserError& e) {
      if (warnings) warnings->push_back(std::string(e.what()) + "; skipping " + dir);
    }
  }
  return std::nullopt;
}

std::vector<std::string> remove_partial_saves(const std::string& run_dir, std::vector<std::string>* kept) {
  std::vector<std::string> removed;
  const std::string root = path_join(run_dir, "checkpoints");
  if (!is_directory(root)) return removed;
  for (const auto& name : list_directory(root)) {
    int step = -1;
    // step_NNNNNNNN.tmp exactly: a checkpoint (step_NNNNNNNN) or anything else is never touched.
    if (std::sscanf(name.c_str(), "step_%d", &step) != 1 || step < 0 || name != step_dir_name(step) + ".tmp")
      continue;
    const std::string dir = path_join(root, name);
    if (!is_directory(dir)) continue;
    if (file_exists(path_join(dir, "meta.json"))) {
      if (kept) kept->push_back(dir);
      continue;
    }
    remove_tree(dir);
    removed.push_back(dir);
  }
  return removed;
}

std::vector<std::string> prune_checkpoints(const std::string& run_dir, int keep_last,
                                           int keep_every) {
  std::vector<std::string> removed;
  if (keep_last <= 0) return removed;
  const std::vector<int> steps = list_checkpoint_steps(run_dir);  // newest first
  for (size_t i = size_t(keep_last); i < steps.size(); ++i) {
    if (keep_every > 0 && steps[i] % keep_every == 0) continue;
    const std::string dir = path_join(path_join(run_dir, "checkpoints"), step_dir_name(steps[i]));
    remove_tree(dir);
    removed.push_back(dir);
  }
  return removed;
}

std::vector<HostTensor> read_checkpoint_tensors(const CheckpointInfo& info,
                                                const std::string& section) {
  const std::vector<TensorEntry> entries = parse_section(info, section);
  FileReader files(info.dir);
  std::vector<HostTensor> out;
  for (const auto& t : entries)
    out.push_back({t.name, t.shape, read_slice(files, t, TensorSlice{0, 0, t.shape.dims[0]})});
  return out;
}


void load_checkpoint_weights(const CheckpointInfo& info, ParameterSet& params) {
  FileReader files(info.dir);
  for_each_local_slice(info, files, "tensors", "", params, [&](const NamedTensor& p, const std::vector<float>& part) {
    params.backend().from_host(p.tensor, part.data(), DType::kF32);
  });
}

void load_checkpoint_training_state(const CheckpointInfo& info, ShardedState& sharded, bool with_moments) {
  const std::string meta_path = path_join(info.dir, "meta.json");
  if (with_moments && !info.meta.contains("optimizer"))
    user_error(meta_path, ": has no optimizer state to resume from");
  // Each rank reads its tensor-parallel slice of one tensor at a time into host memory and hands
  // it to the optimizer, which keeps the part in its ZeRO shard. Nothing is staged on the device
  // (no whole-buffer copies of the weights or moments), and the host holds one tensor's slice at
  // a time. The fp32 weights go to the master copy as they are, not through the bf16 copy.
  const ParameterSet& params = sharded.parameters();
  FileReader files(info.dir);
  auto load = [&](const char* section, const std::string& suffix, ShardedState::Buffer which) {
    for_each_local_slice(info, files, section, suffix, params, [&](const NamedTensor& p, const std::vector<float>& part) {
      sharded.import_host_range(which, params.offset(p), part.data(), int64_t(part.size()));
    });
  };
  load("tensors", "", ShardedState::Buffer::kWeights);
  if (!with_moments) return;
  load("optimizer", ".exp_avg", ShardedState::Buffer::kExpAvg);
  load("optimizer", ".exp_avg_sq", ShardedState::Buffer::kExpAvgSq);
  params.backend().synchronize();
}

}  // namespace ltrain
