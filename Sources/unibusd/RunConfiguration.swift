import ArgumentParser
import Foundation
import UnibusConfig
import UnibusFleet

/// `unibusd run`'s options as configuration: every flag is a key of the
/// same name in files (`max_payload`) and the environment
/// (`UNIBUS_MAX_PAYLOAD`), resolved in this order, later winning:
///
/// 1. defaults;
/// 2. `/etc/unibus/unibusd.json` when it exists (`Run.systemConfigurationFile`);
/// 3. `--config FILE`;
/// 4. `UNIBUS_*` environment variables;
/// 5. flags on the command line;
/// 6. (in a running node) runtime settings pushed by a signed cluster command.
extension Run {
    static let systemConfigurationFile = "/etc/unibus/unibusd.json"

    /// Every `run` option as a configuration key. `config` itself is not one
    /// (a file does not name another). A test checks this list against
    /// `unibusd run --help`.
    static let configurationKeys: [ConfigurationKey] = [
        .init("listen", .text, reload: .restart),
        .init("allowlist", .path(secret: false), reload: .restart),
        .init("max_payload", .integer, reload: .live),
        .init("max_control_line", .integer, reload: .restart),
        .init("max_connections", .integer, reload: .live),
        .init("max_subscriptions", .integer, reload: .live),
        .init("max_pre_auth_bytes", .integer, reload: .restart),
        .init("max_subscriptions_per_user", .integer, reload: .live),
        .init("max_route_interest", .integer, reload: .restart),
        .init("ping_interval", .number, reload: .restart),
        .init("max_pings_out", .integer, reload: .restart),
        .init("max_pending", .integer, reload: .restart),
        .init("write_deadline", .number, reload: .restart),
        .init("tls_cert", .path(secret: false), reload: .live),
        .init("tls_key", .path(secret: true), reload: .live),
        .init("tls_client_ca", .path(secret: false), reload: .live),
        .init("allow_plaintext", .boolean, reload: .restart),
        .init("threads", .integer, reload: .restart),
        .init("identity", .path(secret: true), reload: .restart),
        .init("data_dir", .path(secret: false), reload: .restart),
        .init("control_listen", .text, reload: .restart),
        .init("control_tls_cert", .path(secret: false), reload: .live),
        .init("control_tls_key", .path(secret: true), reload: .live),
        .init("cluster_listen", .text, reload: .restart),
        .init("routes", .list, reload: .restart),
        .init("cluster_name", .text, reload: .restart),
        .init("cluster_cert", .path(secret: false), reload: .live),
        .init("cluster_key", .path(secret: true), reload: .live),
        .init("cluster_ca", .path(secret: false), reload: .restart),
        .init("cluster_allow_plaintext", .boolean, reload: .restart),
        .init("advertise", .text, reload: .restart),
        .init("advertise_control", .text, reload: .restart),
        .init("route_ping_interval", .number, reload: .restart),
        .init("persist_sync", .text, reload: .restart),
        .init("persist_sender_messages_per_minute", .integer, reload: .live),
        .init("persist_sender_bytes_per_minute", .integer, reload: .live),
        .init("beat_interval", .number, reload: .live),
        .init("name", .text, reload: .restart),
        .init("agent_heartbeats", .text, reload: .restart),
        .init("max_agents", .integer, reload: .live),
        .init("agent_heartbeats_per_minute", .integer, reload: .live),
        .init("lame_duck_grace", .number, reload: .live),
        .init("lame_duck_duration", .number, reload: .live),
        .init("lame_duck_peer_wait", .number, reload: .live),
        .init("log_level", .text, reload: .live),
        .init("log_levels", .list, reload: .live),
        .init("log_format", .text, reload: .restart),
        .init("pid_file", .path(secret: false), reload: .restart),
    ]

    /// Each key's effective value in this instance (parsed from the layers
    /// and the command line), in the form the command line takes it.
    func configurationValues() -> [String: ConfigurationValue] {
        func scalar(_ value: String?) -> ConfigurationValue? { value.map { .scalar($0) } }
        func number(_ value: Double) -> ConfigurationValue { .scalar(String(value)) }
        func integer(_ value: Int) -> ConfigurationValue { .scalar(String(value)) }
        let values: [String: ConfigurationValue?] = [
            "listen": scalar(listen), "allowlist": scalar(allowlist), "max_payload": integer(maxPayload),
            "max_control_line": integer(maxControlLine), "max_connections": integer(maxConnections),
            "max_subscriptions": integer(maxSubscriptions), "max_pre_auth_bytes": integer(maxPreAuthBytes),
            "max_subscriptions_per_user": integer(maxSubscriptionsPerUser), "max_route_interest": integer(maxRouteInterest),
            "ping_interval": number(pingInterval), "max_pings_out": integer(maxPingsOut), "max_pending": integer(maxPending),
            "write_deadline": number(writeDeadline), "tls_cert": scalar(tlsCert), "tls_key": scalar(tlsKey),
            "tls_client_ca": scalar(tlsClientCA), "allow_plaintext": .boolean(allowPlaintext), "threads": integer(threads),
            "identity": scalar(identity), "data_dir": scalar(dataDir), "control_listen": scalar(controlListen),
            "control_tls_cert": scalar(controlTlsCert), "control_tls_key": scalar(controlTlsKey),
            "cluster_listen": scalar(clusterListen), "routes": .list(routes), "cluster_name": scalar(clusterName),
            "cluster_cert": scalar(clusterCert), "cluster_key": scalar(clusterKey), "cluster_ca": scalar(clusterCa),
            "cluster_allow_plaintext": .boolean(clusterAllowPlaintext), "advertise": scalar(advertise),
            "advertise_control": scalar(advertiseControl), "route_ping_interval": number(routePingInterval),
            "persist_sync": scalar(persistSync.rawValue),
            "persist_sender_messages_per_minute": integer(persistSenderMessagesPerMinute),
            "persist_sender_bytes_per_minute": integer(persistSenderBytesPerMinute), "beat_interval": number(beatInterval),
            "name": scalar(name), "agent_heartbeats": scalar(agentHeartbeats.rawValue), "max_agents": integer(maxAgents),
            "agent_heartbeats_per_minute": integer(agentHeartbeatsPerMinute), "lame_duck_grace": number(lameDuckGrace),
            "lame_duck_duration": number(lameDuckDuration), "lame_duck_peer_wait": number(lameDuckPeerWait),
            "log_level": scalar(logLevel), "log_levels": .list(logLevels), "log_format": scalar(logFormat.rawValue),
            "pid_file": scalar(pidFile),
        ]
        return values.compactMapValues { $0 }
    }
}

/// A resolved start of `unibusd run`: the effective options, and where
/// each came from.
struct RunInvocation {
    var effective: Run
    var layers: ConfigurationLayers
    /// Flags given on the command line (`--listen`, …).
    var given: Set<String>
    /// The configuration files read, in order.
    var files: [String]
    /// The command line's own words after `run`.
    var commandLine: [String]

    func source(of key: ConfigurationKey) -> ConfigurationSource {
        if given.contains(key.flag) { return .flag }
        return layers.values[key.name]?.source ?? .default
    }

    /// A runtime setting's base value as `/v1/node` shows it: `default`, or
    /// `flag` (configured) with the origin (`flag`, `file PATH`, `environment VARIABLE`).
    func baseSetting(_ setting: RuntimeSetting, _ value: SettingValue) -> EffectiveSetting {
        guard let key = Run.configurationKeys.first(where: { $0.name == setting.rawValue }) else {
            return EffectiveSetting(value: value, source: .default)
        }
        let source = source(of: key)
        return source == .default ? EffectiveSetting(value: value, source: .default) : EffectiveSetting(value: value, source: .flag, origin: source.description)
    }

    /// Resolves files, environment and the command line into the effective
    /// options. `configFile` is `--config` as given on the command line (or
    /// in `UNIBUS_CONFIG`).
    static func resolve(commandLine: [String], configFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                        systemFile: String = Run.systemConfigurationFile) throws -> RunInvocation {
        var files: [String] = []
        if FileManager.default.fileExists(atPath: systemFile) { files.append(systemFile) }
        if let configFile { files.append(configFile) }
        let layers: ConfigurationLayers
        do {
            layers = try ConfigurationLayers.resolve(keys: Run.configurationKeys, files: files, environment: environment)
        } catch {
            throw CLIFailure(error.description)
        }
        var given = Set(commandLine.filter { $0.hasPrefix("--") }.map { $0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? $0 })
        // `--no-x` gives switch `--x`.
        for key in Run.configurationKeys where key.kind == .boolean && given.contains(key.negatedFlag) { given.insert(key.flag) }
        let arguments = layers.arguments(keys: Run.configurationKeys, excluding: given) + commandLine
        let effective: Run
        do {
            effective = try Run.parse(arguments)
            try effective.validateLimits()
        } catch {
            // A value from a file or the environment that the option refuses:
            // name where it came from (the command line's own errors name the flag).
            let message = (error as? CLIFailure)?.description ?? Run.message(for: error)
            for key in Run.configurationKeys where !given.contains(key.flag) && Self.mentions(message, key.flag) {
                if let configured = layers.values[key.name] {
                    throw CLIFailure("\(configured.source): key \"\(key.name)\": \(message)")
                }
            }
            throw CLIFailure(message)
        }
        return RunInvocation(effective: effective, layers: layers, given: given, files: files, commandLine: commandLine)
    }

    /// Whether `message` names `flag` itself (not a longer flag it prefixes).
    static func mentions(_ message: String, _ flag: String) -> Bool {
        var search = message[...]
        while let range = search.range(of: flag) {
            if let next = search[range.upperBound...].first, next.isLetter || next == "-" {
                search = search[range.upperBound...]
                continue
            }
            return true
        }
        return false
    }

    /// The words after `unibusd [run]` on this process's command line.
    static func processCommandLine() -> [String] {
        var words = Array(CommandLine.arguments.dropFirst())
        if words.first == "run" { words.removeFirst() }
        return words
    }

    /// Keys whose values differ between two starts, sorted.
    static func changedKeys(_ old: Run, _ new: Run) -> [ConfigurationKey] {
        let before = old.configurationValues(), after = new.configurationValues()
        return Run.configurationKeys.filter { before[$0.name] != after[$0.name] }
    }
}
