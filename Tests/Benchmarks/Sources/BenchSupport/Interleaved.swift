import Foundation

/// Monotonic seconds.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Cases measured in alternating short slices: this VM's clock speed drifts
/// by 10-20 % over seconds, and ratios between cases must not see that drift.
/// Each case is a batch that returns how many operations it did.
public struct Interleaved {
    public private(set) var cases: [(name: String, batch: () throws -> Int)] = []
    private var operations: [Int] = []
    private var elapsed: [Double] = []

    public init() {}

    public mutating func add(_ name: String, _ batch: @escaping () throws -> Int) {
        cases.append((name, batch))
        operations.append(0)
        elapsed.append(0)
    }

    /// Runs every case for about `seconds` in total, after one warm-up batch each.
    public mutating func run(seconds: Double, slices: Int = 20) throws {
        for (_, batch) in cases { _ = try batch() }
        let slice = seconds / Double(slices)
        for _ in 0..<slices {
            for index in cases.indices {
                let start = monotonicSeconds()
                var done = 0
                var spent = 0.0
                repeat {
                    done += try cases[index].batch()
                    spent = monotonicSeconds() - start
                } while spent < slice
                operations[index] += done
                elapsed[index] += spent
            }
        }
    }

    /// Operations per second of case `index`.
    public func rate(_ index: Int) -> Double { Double(operations[index]) / elapsed[index] }
}
