// Measure a batch with onnxruntime (the Swift package's OnnxRuntimeBindings module) in interleaved rounds,
// exactly as search/measurement/rounds.py says: open every model, warm each, then R rounds visiting every
// model in a fresh random order (one untimed run, then k timed runs); estimate = median of round medians.
import CryptoKit
import Foundation
import OnnxRuntimeBindings

func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

/// A model's bytes if they are the ones the service announced: a cut-off or corrupted download is never measured.
func verifiedModel(_ data: Data, for job: BatchJob) throws -> Data {
    let digest = sha256Hex(data)
    guard digest == job.model_sha256 else {
        throw ProtocolError.corruptModel("model for job \(job.job_id) is corrupt: sha256 \(digest.prefix(12))")
    }
    return data
}

/// ORTVersion() is declared `NSString* _Nullable` (objectivec/include/ort_env.h of the Swift package): a `String?`.
func ortVersionString() -> String {
    let version: String? = ORTVersion()
    return version ?? "unknown"
}

enum MeasureError: Error, LocalizedError {
    case badModel(String)
    case stopped(String)  // given back: the app is stopping now, went to the background, or lost its lease

    var errorDescription: String? {
        switch self {
        case .badModel(let why): return why
        case .stopped(let why): return why
        }
    }
}

/// What shapes the numbers, chosen in the app and recorded in every result's context.
struct MeasureOptions: Sendable {
    var coreML = false  // the CoreML execution provider (CPU still runs what CoreML does not take)
    var coreMLOnlyWithANE = false
}

/// Why this app, as set up, cannot measure a batch of this precision; nil if it can. int8 models are QDQ
/// (QuantizeLinear/DequantizeLinear around the ops): the CPU execution provider runs them as int8 kernels, but
/// the CoreML execution provider cannot take QDQ, so with CoreML on an int8 time would not be one. Nothing is
/// measured, and the jobs fail with this reason: nothing is stored under the wrong precision.
func precisionRefusal(_ precision: String, options: MeasureOptions) -> String? {
    switch precision {
    case "fp32":
        return nil
    case "int8":
        return options.coreML
            ? "precision int8: the CoreML execution provider cannot take QDQ (int8) models; turn CoreML off in the app to measure int8 on the CPU execution provider"
            : nil
    default:
        return "precision \(precision): this app measures fp32 and int8 only"
    }
}

/// One model, open and ready: its session and a fixed random input of its shape.
private struct OpenModel {
    let session: ORTSession
    let inputs: [String: ORTValue]
    let outputs: Set<String>

    func run() throws {
        _ = try session.run(withInputs: inputs, outputNames: outputs, runOptions: nil)
    }
}

private func openModel(env: ORTEnv, path: URL, inputShape: [Int], threads: Int, options: MeasureOptions) throws -> OpenModel {
    let sessionOptions = try ORTSessionOptions()
    try sessionOptions.setIntraOpNumThreads(Int32(threads))
    try sessionOptions.setGraphOptimizationLevel(.all)
    // As onnxruntime_perf_test's -Z and the Python runner: intra-op threads stop spinning between runs.
    try sessionOptions.addConfigEntry(withKey: "session.force_spinning_stop", value: "1")
    if options.coreML {
        let coreML = ORTCoreMLExecutionProviderOptions()
        coreML.onlyEnableForDevicesWithANE = options.coreMLOnlyWithANE
        try sessionOptions.appendCoreMLExecutionProvider(with: coreML)
    }
    let session = try ORTSession(env: env, modelPath: path.path, sessionOptions: sessionOptions)
    guard let inputName = try session.inputNames().first else { throw MeasureError.badModel("model has no input") }
    let count = inputShape.reduce(1, *)
    var generator = SystemRandomNumberGenerator()
    var values = (0..<count).map { _ in Float.random(in: -1...1, using: &generator) }
    let data = NSMutableData(bytes: &values, length: count * MemoryLayout<Float>.size)
    let input = try ORTValue(tensorData: data, elementType: .float, shape: inputShape.map { NSNumber(value: $0) })
    return OpenModel(session: session, inputs: [inputName: input], outputs: Set(try session.outputNames()))
}

struct BatchModel: Sendable {
    let key: String  // the job id
    let path: URL
    let inputShape: [Int]
}

enum BatchOutcome: Sendable {
    case measured(RoundStats)
    case failed(String)
}

/// The thermal state at or above which a batch waits before it starts. `.fair` is common while charging and
/// throttles little; `.serious` is where iOS says performance is reduced (ProcessInfo.ThermalState's
/// documentation), so only from there does waiting buy comparable numbers.
let thermalWaitFrom = ProcessInfo.ThermalState.serious

/// A thermal state as the context records it.
func thermalName(_ state: ProcessInfo.ThermalState) -> String {
    switch state {
    case .nominal: return "nominal"
    case .fair: return "fair"
    case .serious: return "serious"
    case .critical: return "critical"
    @unknown default: return "unknown(\(state.rawValue))"
    }
}

/// Waits while iOS reports the device at `thermalWaitFrom` or hotter (its own throttling signal), up to maxWait.
func waitUntilCool(maxWait: TimeInterval, shouldStop: () -> String?) throws -> TimeInterval {
    let start = Date()
    while ProcessInfo.processInfo.thermalState.rawValue >= thermalWaitFrom.rawValue,
          Date().timeIntervalSince(start) < maxWait {
        if let why = shouldStop() { throw MeasureError.stopped(why) }
        Thread.sleep(forTimeInterval: 5)
    }
    return Date().timeIntervalSince(start)
}

/// Runs on a background thread; `shouldStop` is polled between visits and answers why to give up, if so.
func measureBatch(_ models: [BatchModel], config: MeasureConfig, seed: UInt64, options: MeasureOptions,
                  progress: (Int, Int) -> Void, shouldStop: () -> String?) throws
    -> (outcomes: [String: BatchOutcome], context: [String: JSONValue])
{
    guard Rounds.selfCheck() else { throw MeasureError.badModel("visit orders differ from rounds.py: app is broken") }
    let thermalBefore = ProcessInfo.processInfo.thermalState
    let waited = try waitUntilCool(maxWait: 600, shouldStop: shouldStop)
    let thermalAtStart = ProcessInfo.processInfo.thermalState
    let env = try ORTEnv(loggingLevel: .warning)
    var outcomes: [String: BatchOutcome] = [:]
    var opened: [(key: String, model: OpenModel)] = []
    for m in models {  // a model that fails to load or warm fails alone
        do {
            let model = try openModel(env: env, path: m.path, inputShape: m.inputShape, threads: config.threads,
                                      options: options)
            for _ in 0..<config.warmup { try model.run() }
            opened.append((m.key, model))
        } catch {
            outcomes[m.key] = .failed("onnxruntime: \(error.localizedDescription)")
        }
        if let why = shouldStop() { throw MeasureError.stopped(why) }
    }
    var samples = Array(repeating: [[Double]](), count: opened.count)
    let orders = Rounds.visitOrders(models: opened.count, rounds: config.rounds, seed: seed)
    for (r, order) in orders.enumerated() {
        for i in order {
            if let why = shouldStop() { throw MeasureError.stopped(why) }
            let model = opened[i].model
            try model.run()  // untimed: the previous visit was another model
            var times: [Double] = []
            times.reserveCapacity(config.runs_per_round)
            for _ in 0..<config.runs_per_round {
                let start = DispatchTime.now().uptimeNanoseconds
                try model.run()
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e3)
            }
            samples[i].append(times)
        }
        progress(r + 1, config.rounds)
    }
    for (i, entry) in opened.enumerated() {
        outcomes[entry.key] = .measured(Rounds.summarise(samples[i]))
    }
    let info = ProcessInfo.processInfo
    let context: [String: JSONValue] = [
        "backend": .string("ios"),
        "runtime": .string("onnxruntime-objc"),
        "runtime_version": .string(ortVersionString()),
        "precision": .string(config.precisionName),
        "threads": .number(Double(config.threads)),
        "method": .string("interleaved"),
        "estimator": .string(Rounds.estimator),
        "rounds": .number(Double(config.rounds)),
        "runs_per_round": .number(Double(config.runs_per_round)),
        "warmup": .number(Double(config.warmup)),
        "seed": .number(Double(seed)),
        "batch_models": .number(Double(opened.count)),
        "execution_provider": .string(options.coreML ? "coreml+cpu" : "cpu"),
        "coreml_only_with_ane": .bool(options.coreMLOnlyWithANE),
        "spinning": .string("stopped between runs"),
        "thermal_state_before": .string(thermalName(thermalBefore)),  // when the batch arrived
        "thermal_state_at_start": .string(thermalName(thermalAtStart)),  // after any wait, as measuring began
        "thermal_state_after": .string(thermalName(info.thermalState)),
        "thermal_wait_from": .string(thermalName(thermalWaitFrom)),
        "thermal_wait_s": .number(waited.rounded()),
        "low_power_mode": .bool(info.isLowPowerModeEnabled),
    ]
    return (outcomes, context)
}
