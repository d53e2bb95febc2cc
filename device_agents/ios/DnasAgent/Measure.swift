// Time one ONNX model with onnxruntime (onnxruntime-objc): warm-up, then timed runs, robust statistics.
import CryptoKit
import Foundation
import onnxruntime_objc

func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

struct Stats {
    let median, mean, p10, p90, std: Double
    let n: Int

    init(samples: [Double]) {
        let s = samples.sorted()
        func pct(_ q: Double) -> Double {  // linear interpolation, as numpy.percentile does
            let pos = q * Double(s.count - 1)
            let lo = Int(pos.rounded(.down)), hi = min(lo + 1, s.count - 1)
            return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
        }
        n = s.count
        mean = s.reduce(0, +) / Double(n)
        median = pct(0.5); p10 = pct(0.1); p90 = pct(0.9)
        std = n > 1 ? (s.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(n - 1)).squareRoot() : 0
    }
}

enum MeasureError: Error { case badShape }

/// Runs on a background task; the UI thread never blocks on a measurement.
func measure(model: Data, inputShape: [Int], config: MeasureConfig) throws -> (Stats, [String: String]) {
    let env = try ORTEnv(loggingLevel: .warning)
    let options = try ORTSessionOptions()
    try options.setIntraOpNumThreads(Int32(config.threads))
    try options.setGraphOptimizationLevel(.all)
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(sha256Hex(model)).onnx")
    try model.write(to: path)
    defer { try? FileManager.default.removeItem(at: path) }
    let session = try ORTSession(env: env, modelPath: path.path, sessionOptions: options)
    guard let inputName = try session.inputNames().first else { throw MeasureError.badShape }
    let count = inputShape.reduce(1, *)
    var values = (0..<count).map { _ in Float.random(in: -1...1) }
    let tensorData = NSMutableData(bytes: &values, length: count * MemoryLayout<Float>.size)
    let input = try ORTValue(tensorData: tensorData, elementType: .float,
                             shape: inputShape.map { NSNumber(value: $0) })
    let outputs = Set(try session.outputNames())
    for _ in 0..<config.warmup {
        _ = try session.run(withInputs: [inputName: input], outputNames: outputs, runOptions: nil)
    }
    var samples: [Double] = []
    samples.reserveCapacity(config.runs)
    for _ in 0..<config.runs {
        let start = DispatchTime.now().uptimeNanoseconds
        _ = try session.run(withInputs: [inputName: input], outputNames: outputs, runOptions: nil)
        samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e3)
    }
    let context = [
        "runtime": "onnxruntime-objc",
        "runtime_version": ORTVersion() ?? "unknown",
        "threads": String(config.threads),
        "warmup": String(config.warmup),
        "runs": String(config.runs),
        "thermal_state": String(ProcessInfo.processInfo.thermalState.rawValue),
        "low_power_mode": String(ProcessInfo.processInfo.isLowPowerModeEnabled),
    ]
    return (Stats(samples: samples), context)
}
