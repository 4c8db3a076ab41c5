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
        var next: RunInvocation
        do {
            next = try RunInvocation.resolve(commandLine: running.commandLine, configFile: config)
        } catch {
            log("reload refused; keeping the previous configuration", ["error": "\(error)"], level: .error, logger: configLogger)
            return nil
        }
        let new = next.effective
        let changed = RunInvocation.changedKeys(self, new)
        var needRestart = changed.filter { $0.reload == .restart }.map(\.name)
        // The cluster CA is restart-only even when its file changed in place:
        // the file is compared with the CA in use, and the contexts below are
        // built from the CA in use (a swap after this read changes nothing).
        let runningAuthority = broker.cluster?.tls.current?.authorityPEM
        if let ca = new.clusterCa, let runningAuthority, (try? RegularFile.read(ca)) != runningAuthority {
            needRestart.append("cluster_ca")
        }
        guard needRestart.isEmpty else { return refuseRestart(needRestart) }
        // Build everything that can fail first, with the checks start makes
        // (pairs together, the cluster CA apart from the client CA).
        let componentLevels: [String: Logger.Level]
        let brokerTLS: BrokerTLS?
        var controlTLS: NIOSSLContext?
        var routeTLS: RouteTLS?
        do {
            componentLevels = try LogLevels.parse(splitList(new.logLevels))
            brokerTLS = try new.clientTLS(host: broker.configuration.host)
            if control != nil { controlTLS = try new.controlTLSContext() }
            if let cluster = broker.cluster {
                routeTLS = try new.routeTLS(clusterHost: cluster.configuration.host, routeURLs: cluster.configuration.routes,
                                            clientTLS: brokerTLS, authorityPEM: runningAuthority)
            }
        } catch {
            log("reload refused; keeping the previous configuration", ["error": "\(error)"], level: .error, logger: configLogger)
            return nil
        }
        // TLS cannot be switched on or off, nor mutual TLS, while running.
        if (broker.tls.current == nil) != (brokerTLS == nil) { needRestart += ["tls_cert", "tls_key"] }
        if (broker.tls.current?.verifiesClients ?? false) != (brokerTLS?.verifiesClients ?? false) { needRestart.append("tls_client_ca") }
        if let control, (control.tls.current == nil) != (controlTLS == nil) { needRestart += ["control_tls_cert", "control_tls_key"] }
        if let cluster = broker.cluster, (cluster.tls.current == nil) != (routeTLS == nil) { needRestart += ["cluster_cert", "cluster_key"] }
        guard needRestart.isEmpty else { return refuseRestart(needRestart) }
        do {
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

    private func refuseRestart(_ keys: [String]) -> RunInvocation? {
        let names = Array(Set(keys)).sorted()
        log("reload refused; keeping the previous configuration",
            ["error": "\(names.joined(separator: ", ")) cannot change while the node runs; restart it (e.g. with lame duck: unibusd drain) to apply",
             "keys": names.joined(separator: ",")], level: .error, logger: configLogger)
        return nil
    }
}
