/// A scan of the object keys of a JSON text, on its raw bytes, before any
/// decoder sees it.
///
/// A repeated key is resolved by whatever the decoder does (first wins,
/// last wins, or an error, differing by platform and version), and keys
/// that are equal only by Unicode equivalence are equal to Swift's `String`
/// but not to a byte comparison. Where every reader must reach the same
/// verdict on the same bytes (tokens embedded in the membership log), such
/// keys are refused instead.
public enum JSONObjectKeys {
    /// Why the object keys of `json` are not plain: a key with a non-ASCII
    /// byte or an escape, or a key repeated (as bytes) in one object; nil
    /// when they are; also a text that is not a UTF-8 JSON object. Any input
    /// is scanned (other invalid JSON is the decoder's to refuse after).
    /// `noun` names the keys in the message ("claim").
    public static func problem(in json: [UInt8], naming noun: String) -> String? {
        // The scan reads UTF-8. Foundation's decoder also takes UTF-16 and
        // UTF-32 (guessed from a BOM or zero bytes), where one byte of a
        // character can look like a quote and hide the keys after it: JSON
        // in anything but UTF-8 (RFC 8259), or not an object, is refused.
        guard !json.contains(0) else { return "the JSON is not UTF-8 (it holds a zero byte)" }
        let whitespace: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
        guard json.first(where: { !whitespace.contains($0) }) == UInt8(ascii: "{") else { return "the JSON is not an object" }
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        var containers: [Set<[UInt8]>?] = []   // an object's keys so far, or nil for an array
        var expectKey = false
        var index = 0
        while index < json.count {
            switch json[index] {
            case UInt8(ascii: "{"):
                containers.append([])
                expectKey = true
            case UInt8(ascii: "["):
                containers.append(nil)
                expectKey = false
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = containers.popLast()
                expectKey = false
            case UInt8(ascii: ","):
                expectKey = containers.last.map { $0 != nil } ?? false
            case quote:
                var end = index + 1, escaped = false
                while end < json.count, json[end] != quote {
                    if json[end] == backslash { escaped = true; end += 1 }
                    end += 1
                }
                if expectKey, let last = containers.indices.last, var keys = containers[last] {
                    let key = Array(json[(index + 1)..<min(end, json.count)])
                    guard !escaped, key.allSatisfy({ $0 < 0x80 }) else { return "\(noun) names must be ASCII without escapes" }
                    guard keys.insert(key).inserted else {
                        return "the \(noun) \(JWSError.printable(String(decoding: key, as: UTF8.self))) appears twice"
                    }
                    containers[last] = keys
                    expectKey = false
                }
                index = end
            default:
                break
            }
            index += 1
        }
        return nil
    }
}
