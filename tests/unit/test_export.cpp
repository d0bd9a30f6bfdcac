// The packed exports (export/quant_export.h) and their readers (export/quantized_checkpoint.h):
// a lathe output directory built from data/models/llama (and qwen3_moe-fused) with a synthetic
// sidecar — mixed bits, group sizes, asymmetric zeros, act-order g_idx, W8A8, widths the formats
// cannot express — is exported, read back and compared with the sidecar bit for bit; the model
// opened through open_model gives identical logits from OUT, OUT/gptq and OUT/ct; malformed
// configs and tensors are DataErrors naming file and field.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compressor/common/errors.h"
#include "compressor/common/file_io.h"
#include "compressor/model/architecture.h"
#include "compressor/model/model_spec.h"
#include "compressor/model/tensor_bridge.h"
#include "compressor/model/weight_store.h"
#include "export/export_source.h"
#include "export/open_model.h"
#include "export/quant_export.h"
#include "export/quant_sidecar.h"
#include "export/quantized_checkpoint.h"
#include "tests/unit/safetensors_builder.h"

namespace lathe {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;

const fs::path kModels = fs::path(LATHE_SOURCE_DIR) / "data" / "models";

/// One synthetic quantized tensor of the sidecar.
struct Spec {
  std::string name;
  int64_t bits, group;
  bool sym, permuted = false;
  int64_t act_bits = 0;
};

/// Random codes, bf16-exact scales (hence fp16-exact), zeros; act-order g_idx = a random
/// permutation's column → group map (each group keeps `group` columns).
QuantRecord synthetic_record(const Spec& s, int64_t out, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t g = s.group == -1 ? in : s.group, groups = in / g;
  QuantizedWeight q;
  q.codes = at::randint(0, int64_t{1} << s.bits, {out, in}, at::TensorOptions().dtype(at::kByte));
  q.scales = (at::rand({out, groups}) * 0.02 + 0.001).to(at::kBFloat16).to(at::kFloat);
  q.zeros = s.sym ? at::full({out, groups}, int64_t{1} << (s.bits - 1),
                             at::TensorOptions().dtype(at::kInt))
                  : at::randint(1, int64_t{1} << s.bits, {out, groups},
                                at::TensorOptions().dtype(at::kInt));
  q.spec = QuantSpec{s.bits, s.group, s.sym};
  at::Tensor g_idx;
  if (s.permuted)
    g_idx = at::randperm(in, at::TensorOptions().dtype(at::kLong)).div(g, "floor").to(at::kInt);
  return make_quant_record(s.name, q, g_idx, s.act_bits);
}

/// OUT from `model`: model/ with every quantized weight replaced by its dequantized value in the
/// model dtype (as apply writes it), quant/ with the records, a minimal manifest.
void write_lathe_output(const fs::path& out, const fs::path& model,
                        const std::vector<QuantRecord>& records) {
  fs::create_directories(out / "model");
  fs::create_directories(out / "quant");
  for (const auto& e : fs::directory_iterator(model)) {
    if (e.path().extension() != ".safetensors")
      fs::copy_file(e.path(), out / "model" / e.path().filename());
  }
  fs::remove(out / "model" / "model.safetensors.index.json");
  std::map<std::string, const QuantRecord*> by_name;
  for (const auto& r : records) by_name[r.name] = &r;
  const WeightStore store(model.string());
  ShardTensors weights;
  for (const auto& name : store.names()) {
    const at::Tensor v = load_tensor(store, name);
    auto it = by_name.find(name);
    weights.add(name, it == by_name.end() ? v : it->second->dequantize().to(v.scalar_type()));
  }
  write_safetensors((out / "model" / "model.safetensors").string(), weights.bytes(),
                    {{"format", "pt"}});
  std::vector<TensorBytes> bytes;
  std::vector<at::Tensor> keep;
  for (const auto& r : records) append_quant_tensors(r, &bytes, &keep);
  const std::string shard = "quant-00001-of-00001.safetensors";
  write_safetensors((out / "quant" / shard).string(), bytes, {{"format", "pt"}});
  nlohmann::json map = nlohmann::json::object();
  for (const auto& b : bytes) map[b.name] = shard;
  std::ofstream((out / "quant" / "model.safetensors.index.json").string())
      << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", map}}.dump();
  std::ofstream((out / "lathe_manifest.json").string())
      << R"({"format": "lathe-manifest", "version": 1, "pipeline": "test"})";
}

std::map<std::string, std::vector<int64_t>> shapes_of(const fs::path& model) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& t : expected_tensors(load_model_spec(model), ExpertLayout::kPerExpert))
    out[t.name] = t.shape;
  return out;
}

std::vector<QuantRecord> records_for(const fs::path& model, const std::vector<Spec>& specs) {
  const auto shapes = shapes_of(model);
  std::vector<QuantRecord> out;
  uint64_t seed = 1;
  for (const auto& s : specs)
    out.push_back(synthetic_record(s, shapes.at(s.name)[0], shapes.at(s.name)[1], seed++));
  return out;
}

nlohmann::json read_json(const fs::path& p) {
  return nlohmann::json::parse(read_file(p.string()));
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream(p.string()) << j.dump(2);
}

/// Mixed precision that both formats store packed (no activation quantization).
std::vector<Spec> mixed_specs() {
  const std::string l0 = "model.layers.0.", l1 = "model.layers.1.";
  return {
      {l0 + "self_attn.q_proj.weight", 4, 32, true},
      {l0 + "self_attn.k_proj.weight", 4, 32, true},
      {l0 + "self_attn.v_proj.weight", 4, 32, true},
      {l0 + "self_attn.o_proj.weight", 4, 32, true, /*permuted=*/true},
      {l0 + "mlp.gate_proj.weight", 8, -1, false},
      {l0 + "mlp.up_proj.weight", 2, 64, false},
      {l0 + "mlp.down_proj.weight", 4, 128, false, /*permuted=*/true},
      {l1 + "self_attn.q_proj.weight", 4, 32, true},
      {l1 + "mlp.down_proj.weight", 8, 32, true},
  };
}

class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::is_directory(kModels / "llama")) GTEST_SKIP() << "data/models/llama not built";
    out_ = fs::path(dir_.path()) / "out";
    records_ = records_for(kModels / "llama", mixed_specs());
    write_lathe_output(out_, kModels / "llama", records_);
  }
  TempDir dir_;
  fs::path out_;
  std::vector<QuantRecord> records_;
};

TEST_F(ExportTest, BothFormatsReadBackEqualToTheSidecarBitForBit) {
  for (const ExportFormat f : {ExportFormat::kGptq, ExportFormat::kCompressedTensors}) {
    const ExportResult r = export_checkpoint(out_.string(), f);
    EXPECT_EQ(r.packed_modules, static_cast<int64_t>(records_.size()));
    EXPECT_EQ(r.unpacked_modules, 0);
    const ModelSource src = resolve_model_source(r.dir);
    EXPECT_EQ(src.kind, f == ExportFormat::kGptq ? ModelSource::Kind::kGptq
                                                 : ModelSource::Kind::kCompressedTensors);
    for (const auto& rec : records_) {
      ASSERT_TRUE(src.quantized->has(rec.name)) << rec.name;
      const at::Tensor got = src.quantized->load(rec.name);
      EXPECT_TRUE(at::equal(got, rec.dequantize())) << r.dir << " " << rec.name;
      EXPECT_EQ(src.quantized->activation_bits(rec.name), 0);
    }
    EXPECT_FALSE(src.quantized->has("model.layers.1.self_attn.k_proj.weight"));
    EXPECT_FALSE(fs::exists(r.dir + ".partial"));
    // Every module's tensors are in the layer's own shard; tokenizer copied.
    const nlohmann::json index = read_json(fs::path(r.dir) / "model.safetensors.index.json");
    EXPECT_EQ(index["weight_map"].size(), WeightStore(r.dir).names().size());
    EXPECT_TRUE(fs::exists(fs::path(r.dir) / "tokenizer.json"));
  }
}

TEST_F(ExportTest, GptqConfigHasTheBaseSettingAndDynamicOverrides) {
  const ExportResult r = export_checkpoint(out_.string(), ExportFormat::kGptq);
  const nlohmann::json qc = read_json(fs::path(r.dir) / "config.json")["quantization_config"];
  EXPECT_EQ(qc, read_json(fs::path(r.dir) / "quantize_config.json"));
  // 4-bit g32 sym is the most common setting (q, k, v of layer 0, q of layer 1).
  EXPECT_EQ(qc["bits"], 4);
  EXPECT_EQ(qc["group_size"], 32);
  EXPECT_EQ(qc["sym"], true);
  EXPECT_EQ(qc["desc_act"], false);
  EXPECT_EQ(qc["checkpoint_format"], "gptq");
  EXPECT_EQ(qc["meta"]["quantizer"][0], std::string("lathe:") + LATHE_VERSION);
  const nlohmann::json& d = qc["dynamic"];
  const nlohmann::json o_proj = {
      {"bits", 4}, {"group_size", 32}, {"sym", true}, {"desc_act", true}};
  EXPECT_EQ(d["+:model\\.layers\\.0\\.self_attn\\.o_proj$"], o_proj);
  const nlohmann::json gate = {
      {"bits", 8}, {"group_size", -1}, {"sym", false}, {"desc_act", false}};
  EXPECT_EQ(d["+:model\\.layers\\.0\\.mlp\\.gate_proj$"], gate);
  EXPECT_TRUE(d.contains("-:model\\.layers\\.1\\.self_attn\\.k_proj$"));  // unquantized
  EXPECT_TRUE(d.contains("-:model\\.layers\\.\\d+\\.self_attn\\.v_proj$") ==
              false);  // layer 0's v is quantized
  EXPECT_TRUE(d.contains("-:.*mlp\\.gate$") && d.contains("-:.*shared_expert_gate$"));
  // Layers 2 and 3 are unquantized: their modules are listed one by one (families are split).
  EXPECT_TRUE(d.contains("-:model\\.layers\\.3\\.mlp\\.up_proj$"));
  // Order: skip rules, then overrides, then the two generic router rules last.
  const std::string text = read_file((fs::path(r.dir) / "config.json").string());
  EXPECT_LT(text.find("-:model"), text.find("+:model"));
  EXPECT_LT(text.find("+:model"), text.find("-:.*mlp"));
}

TEST_F(ExportTest, CompressedTensorsConfigGroupsCoverEachModuleOnce) {
  const ExportResult r = export_checkpoint(out_.string(), ExportFormat::kCompressedTensors);
  const nlohmann::json qc = read_json(fs::path(r.dir) / "config.json")["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  std::map<std::string, int> seen;
  for (const auto& [key, g] : qc["config_groups"].items()) {
    for (const auto& t : g["targets"]) seen[t.get<std::string>()] += 1;
  }
  for (const auto& rec : records_)
    EXPECT_EQ(seen[rec.name.substr(0, rec.name.size() - 7)], 1) << rec.name;
  EXPECT_EQ(qc["ignore"][0], "lm_head");
  const WeightStore store(r.dir);
  EXPECT_TRUE(store.contains("model.layers.0.self_attn.o_proj.weight_g_idx"));
  EXPECT_FALSE(store.contains("model.layers.0.self_attn.q_proj.weight_g_idx"));
  EXPECT_TRUE(store.contains("model.layers.0.mlp.up_proj.weight_zero_point"));
  EXPECT_EQ(store.info("model.layers.0.self_attn.q_proj.weight_scale").dtype, DType::kBF16);
}

TEST_F(ExportTest, LogitsFromOutGptqAndCtAreIdentical) {
  export_checkpoint(out_.string(), ExportFormat::kGptq);
  export_checkpoint(out_.string(), ExportFormat::kCompressedTensors);
  const at::Tensor ids = at::tensor({1, 17, 250, 3999, 42, 7}, at::kLong).view({1, 6});
  const at::Tensor valid = at::ones_like(ids, at::kBool);
  const at::Tensor base = open_model(out_.string(), {}).logits(ids, valid);
  const at::Tensor plain = open_model((out_ / "model").string(), {}).logits(ids, valid);
  EXPECT_TRUE(at::equal(open_model((out_ / "gptq").string(), {}).logits(ids, valid), base));
  EXPECT_TRUE(at::equal(open_model((out_ / "ct").string(), {}).logits(ids, valid), base));
  EXPECT_FALSE(
      at::equal(plain, base));  // out/model holds bf16-rounded weights: the sidecar matters
}

TEST(ExportFallbacks, UnpackableWidthsStayDequantizedUnderSkipRules) {
  if (!fs::is_directory(kModels / "llama")) GTEST_SKIP() << "data/models/llama not built";
  TempDir dir;
  const fs::path out = fs::path(dir.path()) / "out";
  const std::vector<QuantRecord> records =
      records_for(kModels / "llama",
                  {
                      {"model.layers.0.self_attn.q_proj.weight", 4, 32, true},
                      {"model.layers.0.self_attn.k_proj.weight", 3, 32,
                       true},  // GPTQ yes, compressed-tensors no
                      {"model.layers.0.self_attn.v_proj.weight", 5, 32, false},  // neither
                      {"model.layers.0.mlp.down_proj.weight", 8, -1, true, false, /*act_bits=*/8},
                  });
  write_lathe_output(out, kModels / "llama", records);
  const ExportResult g = export_checkpoint(out.string(), ExportFormat::kGptq);
  EXPECT_EQ(g.packed_modules, 3);
  EXPECT_EQ(g.unpacked_modules, 1);
  const nlohmann::json gq = read_json(fs::path(g.dir) / "config.json")["quantization_config"];
  // v_proj: layer 0 unpackable, the others unquantized: one pattern for the family.
  EXPECT_TRUE(gq["dynamic"].contains("-:model\\.layers\\.\\d+\\.self_attn\\.v_proj$"))
      << gq["dynamic"].dump();
  auto gptq = open_gptq_checkpoint(g.dir);
  EXPECT_FALSE(gptq->has("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_TRUE(at::equal(gptq->load(records[1].name), records[1].dequantize()));  // 3-bit
  EXPECT_EQ(gptq->activation_bits(records[3].name), 0);

  const ExportResult c = export_checkpoint(out.string(), ExportFormat::kCompressedTensors);
  EXPECT_EQ(c.packed_modules, 2);
  EXPECT_EQ(c.unpacked_modules, 2);
  const nlohmann::json cq = read_json(fs::path(c.dir) / "config.json")["quantization_config"];
  EXPECT_EQ(cq["format"], "mixed-precision");
  const std::vector<std::string> ignore = cq["ignore"];
  // k_proj: 3 bits in layer 0 (not written), unquantized elsewhere: one regex for the family.
  EXPECT_NE(
      std::find(ignore.begin(), ignore.end(), "re:model\\.layers\\.\\d+\\.self_attn\\.k_proj$"),
      ignore.end())
      << cq["ignore"].dump();
  // q_proj: packed in layer 0 only, so the others are listed by name and layer 0 is not ignored.
  EXPECT_NE(std::find(ignore.begin(), ignore.end(), "model.layers.1.self_attn.q_proj"),
            ignore.end());
  EXPECT_EQ(std::find(ignore.begin(), ignore.end(), "model.layers.0.self_attn.q_proj"),
            ignore.end());
  auto ct = open_compressed_tensors_checkpoint(c.dir);
  EXPECT_EQ(ct->activation_bits(records[3].name), 8);  // W8A8 → int-quantized + input_activations
  EXPECT_TRUE(at::equal(ct->load(records[3].name), records[3].dequantize()));
  EXPECT_EQ(WeightStore(c.dir).info("model.layers.0.mlp.down_proj.weight").dtype, DType::kI8);
  // The fallback keeps the dequantized weight of out/model.
  EXPECT_TRUE(at::equal(load_tensor(WeightStore(c.dir), "model.layers.0.self_attn.v_proj.weight"),
                        load_tensor(WeightStore((out / "model").string()),
                                    "model.layers.0.self_attn.v_proj.weight")));
}

TEST(ExportFused, FusedExpertsAreWrittenPerExpert) {
  const fs::path model = kModels / "qwen3_moe-fused";
  if (!fs::is_directory(model)) GTEST_SKIP() << "data/models/qwen3_moe-fused not built";
  const ModelSpec spec = load_model_spec(model);
  std::vector<QuantRecord> records;
  std::string gate_up, down;
  for (const auto& t : expected_layer_tensors(spec, ExpertLayout::kFused, 1)) {
    if (t.role != TensorRole::kExpertsGateUp && t.role != TensorRole::kExpertsDown) continue;
    (t.role == TensorRole::kExpertsGateUp ? gate_up : down) = t.name;
    std::vector<QuantRecord> experts;
    for (int64_t e = 0; e < t.shape[0]; ++e) {
      experts.push_back(synthetic_record({t.name, 4, 32, true, /*permuted=*/true}, t.shape[1],
                                         t.shape[2], 100 + e));
    }
    records.push_back(stack_quant_records(t.name, experts));
  }
  ASSERT_FALSE(gate_up.empty());
  TempDir dir;
  const fs::path out = fs::path(dir.path()) / "out";
  write_lathe_output(out, model, records);
  for (const ExportFormat f : {ExportFormat::kGptq, ExportFormat::kCompressedTensors}) {
    const ExportResult r = export_checkpoint(out.string(), f);
    const ModelSource src = resolve_model_source(r.dir);
    const at::Tensor fused =
        records[0].name == gate_up ? records[0].dequantize() : records[1].dequantize();
    const int64_t inter = fused.size(1) / 2;
    const std::string prefix =
        gate_up.substr(0, gate_up.size() - std::string("gate_up_proj").size());
    for (int64_t e = 0; e < fused.size(0); ++e) {
      EXPECT_TRUE(at::equal(src.quantized->load(prefix + std::to_string(e) + ".gate_proj.weight"),
                            fused[e].narrow(0, 0, inter)));
      EXPECT_TRUE(at::equal(src.quantized->load(prefix + std::to_string(e) + ".up_proj.weight"),
                            fused[e].narrow(0, inter, inter)));
    }
    EXPECT_FALSE(WeightStore(r.dir).contains(gate_up));
    std::string layer0 = prefix;
    layer0.replace(layer0.find(".layers.1."), 10, ".layers.0.");
    EXPECT_TRUE(WeightStore(r.dir).contains(
        layer0 + "0.gate_proj.weight"));  // layer 0: unquantized, split too
    EXPECT_FALSE(WeightStore(r.dir).contains(prefix + "0.gate_proj.weight"));
    const CausalLM lm = open_model(src, {});
    EXPECT_EQ(lm.layout(), ExpertLayout::kPerExpert);
    const at::Tensor ids = at::tensor({1, 5, 9, 200}, at::kLong).view({1, 4});
    const at::Tensor valid = at::ones_like(ids, at::kBool);
    const at::Tensor a = lm.logits(ids, valid), b = open_model(out.string(), {}).logits(ids, valid);
    EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-5)) << (a - b).abs().max().item<float>();
  }
}

// ---- bad input ----------------------------------------------------------------------------

/// Replaces tensor `name` of the checkpoint in `dir` (rewriting its shard).
void replace_tensor(const fs::path& dir, const std::string& name, const at::Tensor& value) {
  const std::string shard = WeightStore(dir.string()).info(name).shard_path;
  const WeightStore file(shard);
  ShardTensors out;
  for (const auto& n : file.names()) out.add(n, n == name ? value : load_tensor(file, n).clone());
  write_safetensors(shard, out.bytes(), {{"format", "pt"}});
}

class BadExportTest : public ExportTest {
 protected:
  void SetUp() override {
    ExportTest::SetUp();
    if (IsSkipped()) return;
    gptq_ = out_ / "gptq";
    ct_ = out_ / "ct";
    export_checkpoint(out_.string(), ExportFormat::kGptq);
    export_checkpoint(out_.string(), ExportFormat::kCompressedTensors);
  }
  void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = read_json(dir / "config.json");
    edit(c["quantization_config"]);
    write_json(dir / "config.json", c);
  }
  fs::path gptq_, ct_;
  const std::string q0_ = "model.layers.0.self_attn.q_proj";
};

TEST_F(BadExportTest, MissingOrGarbledGptqFields) {
  const std::string config = (gptq_ / "config.json").string();
  edit_config(gptq_, [](nlohmann::json& q) { q.erase("bits"); });
  std::string what = expect_error([&] { open_gptq_checkpoint(gptq_.string()); }, ErrorKind::kData,
                                  "quantization_config.bits", "missing");
  EXPECT_NE(what.find(config), std::string::npos) << what;
  edit_config(gptq_, [](nlohmann::json& q) { q["bits"] = "four"; });
  expect_error([&] { resolve_model_source(gptq_.string()); }, ErrorKind::kData,
               "quantization_config.bits", "expected an integer");
  edit_config(gptq_, [](nlohmann::json& q) { q["bits"] = 5; });
  expect_error([&] { open_gptq_checkpoint(gptq_.string()); }, ErrorKind::kData,
               "quantization_config.bits", "2, 3, 4 or 8");
  edit_config(gptq_, [](nlohmann::json& q) {
    q["bits"] = 4;
    q["dynamic"]["+:model\\.layers\\.("] = nlohmann::json::object();
  });
  expect_error([&] { open_gptq_checkpoint(gptq_.string()); }, ErrorKind::kData,
               "quantization_config.dynamic.+:model\\.layers\\.(", "regex");
  edit_config(gptq_, [](nlohmann::json& q) {
    q["dynamic"] = {{"-:model\\.layers\\.0\\.self_attn\\.q_proj$", nlohmann::json::object()}};
  });
  expect_error([&] { open_gptq_checkpoint(gptq_.string()); }, ErrorKind::kData, q0_ + ".qweight",
               "skips this module");
  edit_config(gptq_, [](nlohmann::json& q) { q["checkpoint_format"] = "gptq_v2"; });
  expect_error([&] { open_gptq_checkpoint(gptq_.string()); }, ErrorKind::kUnsupported,
               "quantization_config.checkpoint_format", "v1");
  edit_config(gptq_, [](nlohmann::json& q) { q["quant_method"] = "awq"; });
  expect_error([&] { resolve_model_source(gptq_.string()); }, ErrorKind::kUnsupported,
               "quantization_config.quant_method", "awq");
}

TEST_F(BadExportTest, WrongGptqTensorsNameFileAndTensor) {
  const auto reader = [&] { return open_gptq_checkpoint(gptq_.string()); };
  const std::string shard = WeightStore(gptq_.string()).info(q0_ + ".scales").shard_path;
  const at::Tensor scales = load_tensor(WeightStore(gptq_.string()), q0_ + ".scales").clone();
  replace_tensor(gptq_, q0_ + ".scales", scales.to(at::kFloat));
  std::string what = expect_error([&] { reader()->load(q0_ + ".weight"); }, ErrorKind::kData,
                                  q0_ + ".scales", "dtype");
  EXPECT_NE(what.find(shard), std::string::npos) << what;
  replace_tensor(gptq_, q0_ + ".scales", scales);
  const at::Tensor g_idx = load_tensor(WeightStore(gptq_.string()), q0_ + ".g_idx").clone();
  at::Tensor bad = g_idx.clone();
  bad[5] = 4;  // 128 columns in groups of 32: G = 4
  replace_tensor(gptq_, q0_ + ".g_idx", bad);
  what = expect_error([&] { reader()->load(q0_ + ".weight"); }, ErrorKind::kData, q0_ + ".g_idx",
                      "[0, 4)");
  EXPECT_NE(what.find(shard), std::string::npos) << what;
  replace_tensor(gptq_, q0_ + ".g_idx", g_idx);
  const at::Tensor qweight = load_tensor(WeightStore(gptq_.string()), q0_ + ".qweight").clone();
  replace_tensor(gptq_, q0_ + ".qweight", qweight.narrow(0, 0, 8).clone());
  expect_error([&] { reader()->load(q0_ + ".weight"); }, ErrorKind::kData, q0_ + ".qweight",
               "shape");
}

TEST_F(BadExportTest, MissingOrGarbledCompressedTensorsFields) {
  edit_config(ct_, [](nlohmann::json& q) { q["config_groups"].begin()->erase("weights"); });
  const std::string first =
      read_json(ct_ / "config.json")["quantization_config"]["config_groups"].begin().key();
  expect_error([&] { open_compressed_tensors_checkpoint(ct_.string()); }, ErrorKind::kData,
               "quantization_config.config_groups." + first + ".weights", "missing");
  fs::remove_all(ct_);
  export_checkpoint(out_.string(), ExportFormat::kCompressedTensors);
  edit_config(ct_, [](nlohmann::json& q) {
    for (auto& [k, g] : q["config_groups"].items())
      g["targets"] = nlohmann::json::array({"model.layers.9.nothing"});
  });
  expect_error([&] { open_compressed_tensors_checkpoint(ct_.string()); }, ErrorKind::kData,
               "model.layers.0.mlp.down_proj.weight_packed", "no config group");
  edit_config(ct_, [](nlohmann::json& q) {
    for (auto& [k, g] : q["config_groups"].items())
      g["targets"] = nlohmann::json::array({"Linear"});
  });
  expect_error([&] { open_compressed_tensors_checkpoint(ct_.string()); }, ErrorKind::kData,
               "model.layers.0.mlp.down_proj.weight_packed", "several config groups");
  edit_config(ct_, [](nlohmann::json& q) { q["quantization_status"] = "frozen"; });
  expect_error([&] { open_compressed_tensors_checkpoint(ct_.string()); }, ErrorKind::kUnsupported,
               "quantization_config.quantization_status", "compressed");
}

TEST_F(BadExportTest, WrongCompressedTensorsTensorsNameFileAndTensor) {
  const std::string shard = WeightStore(ct_.string()).info(q0_ + ".weight_packed").shard_path;
  const at::Tensor packed = load_tensor(WeightStore(ct_.string()), q0_ + ".weight_packed").clone();
  replace_tensor(ct_, q0_ + ".weight_packed", packed.narrow(1, 0, 3).clone());
  const std::string what =
      expect_error([&] { open_compressed_tensors_checkpoint(ct_.string())->load(q0_ + ".weight"); },
                   ErrorKind::kData, q0_ + ".weight_packed", "shape");
  EXPECT_NE(what.find(shard), std::string::npos) << what;
  replace_tensor(ct_, q0_ + ".weight_packed", packed);
  const std::string o = "model.layers.0.self_attn.o_proj";
  at::Tensor g = load_tensor(WeightStore(ct_.string()), o + ".weight_g_idx").clone();
  g[0] = -1;
  replace_tensor(ct_, o + ".weight_g_idx", g);
  expect_error([&] { open_compressed_tensors_checkpoint(ct_.string())->load(o + ".weight"); },
               ErrorKind::kData, o + ".weight_g_idx", "[0, 4)");
}

// ---- CLI ----------------------------------------------------------------------------------

int run_lathe(const std::string& args) {
  const int status =
      std::system((std::string(LATHE_BINARY) + " " + args + " > /dev/null 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(ExportTest, CliRefusesAnExistingTargetWithoutForce) {
  EXPECT_EQ(run_lathe("export " + out_.string() + " --format gptq"), 0);
  EXPECT_TRUE(fs::exists(out_ / "gptq" / "quantize_config.json"));
  EXPECT_EQ(run_lathe("export " + out_.string() + " --format gptq"), 2);
  EXPECT_EQ(run_lathe("export " + out_.string() + " --format gptq --force"), 0);
  EXPECT_EQ(run_lathe("export " + out_.string() + " --format compressed-tensors"), 0);
  EXPECT_TRUE(fs::exists(out_ / "ct" / "config.json"));
  EXPECT_EQ(run_lathe("export " + out_.string() + " --format onnx"), 2);
  EXPECT_EQ(run_lathe("export " + (kModels / "llama").string() + " --format gptq"), 2);
}

}  // namespace
}  // namespace lathe
