import Foundation
import Logging
import NIOSSL
import UnibusBroker
import UnibusConfig
import UnibusCrypto
import UnibusControl
import UnibusFleet
import UnibusNode

extension Run {
    /// SIGHUP: reads the configuration again and applies it all or not at
    /// all, as nats-server does. Changes to keys that need a restart are
    /// refused by name; every TLS file is loaded again (a certificate
    /// renewed in place is picked up) and every new context is built before
    /// any is used; then runtime settings (below any an admin pushed by
    /// signed command), log levels and lame-duck timings change. `self` is
    /// the running configuration; returns the new one, or nil when the old
    /// one stays.
    func reload(_ running: RunInvocation, broker: Broker, control: ControlServer?, node: Node?,
                allowlist: StaticAllowlist?) async -> RunInvocation? {
        let next: RunInvocation
        do {
            next = try RunInvocation.resolve(commandLine: running.commandLine, configFile: config)
            try next.effective.validateLimits()
        } catch {
            log("reload refused; keeping the previous configuration", ["error": "\(error)"], level: .error, logger: configLogger)
            return nil
        }
        let new = next.effective
        let changed = RunInvocation.changedKeys(self, new)
        var needRestart = changed.filter { $0.reload == .restart }.map(\.name)
        // TLS cannot be switched on or off, nor mutual TLS, while running.
        if (tlsCert == nil) != (new.tlsCert == nil) || (tlsClientCA == nil) != (new.tlsClientCA == nil) {
            needRestart += ["tls_cert", "tls_client_ca"].filter { name in changed.contains { $0.name == name } }
        }
        if ((controlTlsCert ?? tlsCert) == nil) != ((new.controlTlsCert ?? new.tlsCert) == nil) {
            needRestart += ["control_tls_cert"].filter { name in changed.contains { $0.name == name } }
        }
        if (clusterCert == nil) != (new.clusterCert == nil) { needRestart += ["cluster_cert"] }
        guard needRestart.isEmpty else {
            let names = Array(Set(needRestart)).sorted()
            log("reload refused; keeping the previous configuration",
                ["error": "\(names.joined(separator: ", ")) cannot change while the node runs; restart it (e.g. with lame duck: unibusd drain) to apply",
                 "keys": names.joined(separator: ",")], level: .error, logger: configLogger)
            return nil
        }
        // Build everything that can fail first.
        let componentLevels: [String: Logger.Level]
        var brokerTLS: BrokerTLS?
        var controlTLS: NIOSSLContext?
        var routeTLS: RouteTLS?
        do {
            componentLevels = try LogLevels.parse(splitList(new.logLevels))
            if let cert = new.tlsCert, let key = new.tlsKey {
                do {
                    brokerTLS = try BrokerTLS(certificateChainPath: cert, privateKeyPath: key, clientCAPath: new.tlsClientCA)
                } catch {
                    throw CLIFailure(Self.tlsProblem(error, files: [(cert, "tls_cert"), (key, "tls_key")] + (new.tlsClientCA.map { [($0, "tls_client_ca")] } ?? [])))
                }
            }
            if control != nil { controlTLS = try new.controlTLSContext() }
            if let cert = new.clusterCert, let key = new.clusterKey, let ca = new.clusterCa {
                if CertificateFiles.isIssued(cert, by: ca) == false {
                    throw CLIFailure("cluster_cert \(cert) was not issued by cluster_ca \(ca): no peer would accept it")
                }
                do {
                    routeTLS = try RouteTLS(certificateChainPath: cert, privateKeyPath: key, caPath: ca)
                } catch {
                    throw CLIFailure(Self.tlsProblem(error, files: [(cert, "cluster_cert"), (key, "cluster_key"), (ca, "cluster_ca")]))
                }
            }
            if let allowlist { try allowlist.reload() }
        } catch {
            log("reload refused; keeping the previous configuration", ["error": "\(error)"], level: .error, logger: configLogger)
            return nil
        }
        // Apply: nothing below can fail.
        if let brokerTLS { broker.tls.replace(with: brokerTLS) }
        if let controlTLS { control?.tls.replace(with: controlTLS) }
        if let routeTLS { broker.cluster?.tls.replace(with: routeTLS) }
        if allowlist != nil { await broker.reauthorize() }
        LogLevels.shared.setComponents(componentLevels)
        var kept: [String] = []
        if let operations = node?.operations, let dataDir = new.dataDir {
            let base = new.operationsConfiguration(dataDir: dataDir, invocation: next).baseSettings
            operations.reloadBaseSettings(base)
            kept = changed.filter { operations.effectiveSettings[$0.name]?.source == .command }.map(\.name)
        } else {
            LogLevels.shared.base = LogLevels.names[new.logLevel] ?? .info
            broker.limits.maxConnections.store(new.maxConnections, ordering: .relaxed)
            broker.limits.maxSubscriptions.store(new.maxSubscriptions, ordering: .relaxed)
            broker.limits.maxSubscriptionsPerUser.store(new.maxSubscriptionsPerUser, ordering: .relaxed)
            broker.limits.maxPayload.store(new.maxPayload, ordering: .relaxed)
        }
        let shown = changed.map { key -> String in
            key.isSecret ? key.name : "\(key.name)=\(new.configurationValues()[key.name]?.description ?? "")"
        }
        var fields = ["changed": shown.isEmpty ? "nothing (TLS files loaded again)" : shown.joined(separator: ", ")]
        if !kept.isEmpty { fields["kept_from_commands"] = kept.joined(separator: ",") }
        log("configuration reloaded", fields, logger: configLogger)
        return next
    }
}
