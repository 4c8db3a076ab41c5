/// A runtime setting's value now and where it came from, as `/v1/node`
/// and `unibus node list --json` show it.
public struct EffectiveSetting: Codable, Equatable, Sendable {
    /// Where a value came from, lowest first: a command sits above the rest.
    /// `flag` is the node's configuration (a flag, a file or the
    /// environment; `origin` says which): the wire values stay the three
    /// that clients of earlier releases decode, and a value this build does
    /// not know reads as `flag` rather than failing the whole document.
    public enum Source: String, Codable, Sendable {
        case `default`, flag, command

        public init(from decoder: Decoder) throws {
            self = Source(rawValue: try decoder.singleValueContainer().decode(String.self)) ?? .flag
        }
    }

    public var value: SettingValue
    public var source: Source
    /// For configured values: `flag`, `file PATH` or `environment VARIABLE`.
    public var origin: String?
    /// For `command`: the command's version, target, admin and time.
    public var version: UInt64?
    public var target: String?
    public var admin: String?
    public var at: String?

    public init(value: SettingValue, source: Source, origin: String? = nil, version: UInt64? = nil, target: String? = nil, admin: String? = nil,
                at: String? = nil) {
        self.value = value
        self.source = source
        self.origin = origin
        self.version = version
        self.target = target
        self.admin = admin
        self.at = at
    }
}
