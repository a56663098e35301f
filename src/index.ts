/**
 * Library entry of step1x (`import { Gpu, linear, EditPipeline } from 'step1x'`).
 *
 * Runtime and ops are re-exported flat (they are the public kernel API); models, io and the pipeline
 * export their main classes by name so that helper names of different modules cannot collide.
 * The CLI (`src/cli`) is not part of the library.
 */
export { ExitCode, Step1xError, fail, fmtShape, type ExitCodeValue } from './errors.js';

// ---- runtime ----------------------------------------------------------------------------------------
export { Gpu, f32u, i32u, type Kernel, type Uniform, type HostData } from './runtime/gpu.js';
export { Tensor, Storage, DTYPE_BYTES, numelOf, storageBytes, assertShape, assertDtype, type DType, type Shape } from './runtime/tensor.js';
export { BufferPool, type PooledBuffer } from './runtime/buffer-pool.js';
export { preprocess, pipelineKey, defineShader, SHADER_DIR, type Defines } from './runtime/shader-source.js';
export { Profiler, type ProfileRow, type ProfileReport } from './runtime/profiler.js';
export * from './runtime/half.js';
export { describeAdapter, type AdapterDescription, type DeviceOptions } from './runtime/device.js';

// ---- ops --------------------------------------------------------------------------------------------
export * from './ops/elementwise.js';
export * from './ops/linear.js';
export * from './ops/attention.js';
export * from './ops/norm.js';
export * from './ops/layout.js';
export * from './ops/conv.js';
export { grid1d } from './ops/util.js';

// ---- io ---------------------------------------------------------------------------------------------
export { SafetensorsFile, writeSafetensors, type StDType, type TensorInfo } from './io/safetensors.js';
export { Checkpoint, checkKeys } from './io/checkpoint.js';
export { readImage, decodeImage, writePng, encodePng } from './io/image.js';

// ---- nn and models ----------------------------------------------------------------------------------
export { Linear } from './nn/linear.js';
export { loadWeight } from './nn/weights.js';
export { AutoEncoder, REAL_AE, type AeConfig } from './models/vae.js';
export { Qwen2Connector } from './models/connector.js';
export { Step1XEdit } from './models/dit.js';
export { QwenVL } from './models/qwen25vl/model.js';

// ---- pipeline ---------------------------------------------------------------------------------------
export { EditPipeline, type EditRequest, type EditResult } from './pipeline/edit-pipeline.js';
