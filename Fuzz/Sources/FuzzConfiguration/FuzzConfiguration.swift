import UnibusConfig

/// Arbitrary bytes as a configuration file (the first part) and as
/// `UNIBUS_*` environment values (the rest, split at NUL): every input ends
/// in resolved layers or a named error, never a trap; resolved values give
/// command-line words that name only known flags.
private let keys: [ConfigurationKey] = [
    .init("listen", .text, reload: .restart),
    .init("max_payload", .integer, reload: .live),
    .init("ping_interval", .number, reload: .restart),
    .init("allow_plaintext", .boolean, reload: .restart),
    .init("routes", .list, reload: .restart),
    .init("tls_key", .path(secret: true), reload: .live),
    .init("allowlist", .path(secret: false), reload: .restart),
    .init("name", .text, reload: .restart),
]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfiguration(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let parts = bytes.split(separator: 0, maxSplits: 8, omittingEmptySubsequences: false).map { Array($0) }
    var environment: [String: String] = ["SET": "value"]
    for (key, part) in zip(keys, parts.dropFirst()) {
        environment[key.environmentVariable] = String(decoding: part, as: UTF8.self)
    }
    guard let layers = try? ConfigurationLayers.resolve(keys: keys, documents: [("fuzz.json", parts.first ?? [])], environment: environment) else {
        return 0
    }
    // Each value gives its flag and its words: two per scalar, two per list item, one per switch.
    let words = layers.arguments(keys: keys, excluding: [])
    let expected = keys.reduce(0) { total, key in
        switch layers.values[key.name]?.value {
        case .scalar?: return total + 2
        case .list(let items)?: return total + 2 * items.count
        case .boolean?: return total + 1
        case nil: return total
        }
    }
    guard words.count == expected else { fatalError("\(words.count) argument words for \(expected) expected") }
    return 0
}
