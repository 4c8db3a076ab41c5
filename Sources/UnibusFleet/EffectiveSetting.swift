/// A runtime setting's value now and where it came from, as `/v1/node`
/// and `unibus node list --json` show it.
public struct EffectiveSetting: Codable, Equatable, Sendable {
    /// Where a value came from, lowest first: a command sits above the rest.
    public enum Source: String, Codable, Sendable {
        case `default`, file, environment, flag, command
    }

    public var value: SettingValue
    public var source: Source
    /// For `command`: the command's version, target, admin and time.
    public var version: UInt64?
    public var target: String?
    public var admin: String?
    public var at: String?

    public init(value: SettingValue, source: Source, version: UInt64? = nil, target: String? = nil, admin: String? = nil, at: String? = nil) {
        self.value = value
        self.source = source
        self.version = version
        self.target = target
        self.admin = admin
        self.at = at
    }
}
