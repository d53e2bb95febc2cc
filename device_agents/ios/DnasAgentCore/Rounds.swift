// Interleaved rounds: search/measurement/rounds.py, the one measurement rule, written again in Swift.
//
// The visit orders are the same as rounds.py's for the same seed: `random.Random(seed)` is CPython's
// Mersenne Twister (MT19937, seeded by init_by_array with the seed's 32-bit words) and `shuffle` is
// Fisher-Yates drawing `randbelow(i + 1)` from `getrandbits(k)` with rejection. Both are reproduced below,
// and `Rounds.selfCheck()` compares them with orders rounds.py printed (tests/test_ios_sources.py checks
// that these vectors are what rounds.py prints today; spec/visit_orders.json holds more, seeds past 2^32 and
// sizes past powers of two, checked here by `swift test` and against rounds.py by tests/test_ios_specs.py).
// Estimator: median over rounds of each round's median.
import Foundation

/// CPython's `random.Random(seed)`, as far as `shuffle` needs it.
struct PythonRandom: Sendable {
    private var mt = [UInt32](repeating: 0, count: 624)
    private var index = 624

    init(seed: UInt64) {
        var key: [UInt32] = []
        var s = seed
        repeat {
            key.append(UInt32(truncatingIfNeeded: s))
            s >>= 32
        } while s != 0
        mt[0] = 19_650_218
        for i in 1..<624 {
            mt[i] = 1_812_433_253 &* (mt[i - 1] ^ (mt[i - 1] >> 30)) &+ UInt32(i)
        }
        var i = 1, j = 0
        for _ in 0..<max(624, key.count) {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) &* 1_664_525)) &+ key[j] &+ UInt32(j)
            i += 1; j += 1
            if i >= 624 { mt[0] = mt[623]; i = 1 }
            if j >= key.count { j = 0 }
        }
        for _ in 0..<623 {
            mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) &* 1_566_083_941)) &- UInt32(i)
            i += 1
            if i >= 624 { mt[0] = mt[623]; i = 1 }
        }
        mt[0] = 0x8000_0000
    }

    private mutating func next32() -> UInt32 {
        if index >= 624 {
            for k in 0..<624 {
                let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % 624] & 0x7fff_ffff)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908_b0df : 0)
            }
            index = 0
        }
        var y = mt[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9d2c_5680
        y ^= (y << 15) & 0xefc6_0000
        y ^= y >> 18
        return y
    }

    /// `_randbelow_with_getrandbits(n)` for 0 < n < 2^32.
    private mutating func below(_ n: Int) -> Int {
        let k = Int.bitWidth - n.leadingZeroBitCount  // n.bit_length()
        var r = Int(next32() >> UInt32(32 - k))
        while r >= n { r = Int(next32() >> UInt32(32 - k)) }
        return r
    }

    mutating func shuffle(_ x: inout [Int]) {
        guard x.count > 1 else { return }
        for i in stride(from: x.count - 1, to: 0, by: -1) {
            let j = below(i + 1)
            x.swapAt(i, j)
        }
    }
}

enum Rounds {
    static let estimator = "median of per-round medians"

    /// One fresh random permutation of the models per round, reproducible from the seed (rounds.visit_orders).
    static func visitOrders(models: Int, rounds: Int, seed: UInt64) -> [[Int]] {
        var rng = PythonRandom(seed: seed)
        var order = Array(0..<models)
        var out: [[Int]] = []
        for _ in 0..<rounds {
            rng.shuffle(&order)
            out.append(order)
        }
        return out
    }

    static func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        let mid = s.count / 2
        return s.count % 2 == 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
    }

    /// Linear interpolation between closest ranks (numpy's default), as rounds.percentile.
    static func percentile(_ values: [Double], _ q: Double) -> Double {
        let s = values.sorted()
        let pos = Double(s.count - 1) * q / 100
        let lo = Int(pos.rounded(.down)), hi = Int(pos.rounded(.up))
        return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
    }

    /// A result body's statistics from each round's timed runs (rounds.summarise_rounds).
    static func summarise(_ roundSamples: [[Double]]) -> RoundStats {
        let medians = roundSamples.map(median)
        let mean = medians.reduce(0, +) / Double(medians.count)
        let variance = medians.count > 1
            ? medians.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(medians.count - 1) : 0
        return RoundStats(median: median(medians), mean: mean, p10: percentile(medians, 10),
                          p90: percentile(medians, 90), std: variance.squareRoot(),
                          n: roundSamples.reduce(0) { $0 + $1.count }, roundMedians: medians)
    }

    /// The orders rounds.py prints for these seeds; a mismatch means this file no longer follows the rule.
    static func selfCheck() -> Bool {
        visitOrders(models: 5, rounds: 3, seed: 2_670_033_164) == [[4, 3, 0, 2, 1], [1, 0, 4, 2, 3], [1, 4, 0, 3, 2]]
            && visitOrders(models: 7, rounds: 2, seed: 0) == [[4, 2, 1, 0, 5, 3, 6], [2, 4, 5, 3, 6, 1, 0]]
    }
}

struct RoundStats: Sendable {
    let median, mean, p10, p90, std: Double
    let n: Int
    let roundMedians: [Double]
}
