import Foundation
import Logging
import NIOConcurrencyHelpers

/// unibusd's log levels: one for the whole node (the runtime setting
/// `log_level`, which a signed command may change) and one per component
/// (`log_levels`, e.g. `cluster=debug`), read on every record so a change
/// takes effect at once.
final class LogLevels: Sendable {
    static let shared = LogLevels()

    /// The levels an operator may name (`log_level`'s values).
    static let names: [String: Logger.Level] = ["debug": .debug, "info": .info, "warning": .warning, "error": .error]

    private let state = NIOLockedValueBox<(base: Logger.Level, components: [String: Logger.Level])>((.info, [:]))

    var base: Logger.Level {
        get { state.withLockedValue { $0.base } }
        set { state.withLockedValue { $0.base = newValue } }
    }

    func level(for label: String) -> Logger.Level {
        state.withLockedValue { $0.components[Self.component(label)] ?? $0.base }
    }

    func setComponents(_ levels: [String: Logger.Level]) {
        state.withLockedValue { $0.components = levels }
    }

    /// `unibus.cluster` → `cluster`.
    static func component(_ label: String) -> String {
        label.hasPrefix("unibus.") ? String(label.dropFirst("unibus.".count)) : label
    }

    /// The components whose level can be set: the labels unibusd logs under.
    static let components = ["unibusd", "node", "cluster", "control", "config"]

    /// Parses `log_levels` entries (`COMPONENT=LEVEL`); errors name the entry.
    static func parse(_ entries: [String]) throws -> [String: Logger.Level] {
        var levels: [String: Logger.Level] = [:]
        for entry in entries {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, components.contains(parts[0]), let level = names[parts[1]] else {
                throw CLIFailure("--log-levels entry \"\(entry.prefix(64))\" must be COMPONENT=LEVEL with a component among "
                                 + components.joined(separator: ", ") + " and a level among debug, info, warning, error")
            }
            levels[parts[0]] = level
        }
        return levels
    }
}

/// How log records are written: one JSON object per line (the default:
/// what journald, Loki and `jq` read), or text for a person at a terminal.
enum LogFormat: String, CaseIterable, Sendable {
    case json, text, auto

    var resolved: LogFormat {
        guard self == .auto else { return self }
        return isatty(2) == 1 ? .text : .json
    }
}

/// A swift-log handler writing one line per record to standard error:
/// JSON lines (`ts`, `level`, `component`, `msg` and the metadata as
/// string fields) or a text line. Levels come from `LogLevels`.
struct StandardErrorLogHandler: LogHandler {
    let label: String
    let format: LogFormat
    var metadata: Logger.Metadata = [:]

    init(label: String, format: LogFormat) {
        self.label = label
        self.format = format.resolved
    }

    var logLevel: Logger.Level {
        get { LogLevels.shared.level(for: label) }
        set { }   // Levels are the node's (log_level, log_levels), not a logger's.
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in metadata { fields[key] = "\(value)" }
        for (key, value) in event.metadata ?? [:] { fields[key] = "\(value)" }
        let component = LogLevels.component(label)
        let timestamp = Self.timestamp()
        var line: [UInt8]
        switch format {
        case .text, .auto:
            let extra = fields.keys.sorted().map { "\($0)=\(Self.textValue(fields[$0] ?? ""))" }.joined(separator: " ")
            line = Array("\(timestamp) \(event.level.rawValue.uppercased()) [\(component)] \(Self.escapeControls("\(event.message)"))\(extra.isEmpty ? "" : " " + extra)".utf8)
        case .json:
            fields["level"] = Self.levelName(event.level)
            fields["msg"] = "\(event.message)"
            fields["ts"] = timestamp
            fields["component"] = component
            guard let data = try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
            line = [UInt8](data)
        }
        line.append(UInt8(ascii: "\n"))
        Self.write(line)
    }

    static func levelName(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "trace"
        case .debug: return "debug"
        case .info, .notice: return "info"
        case .warning: return "warning"
        case .error, .critical: return "error"
        }
    }

    /// A field for the text format: control characters escaped (a peer's
    /// string cannot start a forged line), quoted when it has spaces.
    static func textValue(_ value: String) -> String {
        let escaped = escapeControls(value)
        return escaped.contains(" ") || escaped.isEmpty ? "\"\(escaped)\"" : escaped
    }

    static func escapeControls(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.properties.generalCategory == .control { out += "\\u{\(String(scalar.value, radix: 16))}" } else { out.unicodeScalars.append(scalar) }
        }
        return out
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var time = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &time)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(time.tm_year) + 1900, Int(time.tm_mon) + 1, Int(time.tm_mday),
                      Int(time.tm_hour), Int(time.tm_min), Int(time.tm_sec), Int(now.tv_nsec / 1_000_000))
    }

    /// write(2), not FileHandle: a closed or full stderr is a dropped line,
    /// never a trap (FileHandle.write raises on EPIPE).
    static func write(_ line: [UInt8]) {
        line.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(2, base + offset, raw.count - offset)
                if written > 0 { offset += written } else if written < 0 && errno == EINTR { continue } else { return }
            }
        }
    }
}

/// unibusd's own logger (component `unibusd`).
let mainLogger = Logger(label: "unibus.unibusd")

/// A record from unibusd's commands: `message` with string fields.
func log(_ message: String, _ fields: [String: String], level: Logger.Level = .info, logger: Logger = mainLogger) {
    logger.log(level: level, "\(message)", metadata: fields.mapValues { .string($0) })
}

/// The node's log (membership, persistence, operations).
let nodeLogger = Logger(label: "unibus.node")
/// Route links.
let clusterLogger = Logger(label: "unibus.cluster")
/// Configuration files, reloads.
let configLogger = Logger(label: "unibus.config")
