/// What a server's `-ERR '…'` line means, for the errors a client acts on.
/// NATS conveys them only as text (nats.go matches the same words); this is
/// the one place that reads it.
public enum ServerError: Equatable, Sendable {
    /// `Permissions Violation for Subscription to "S"`: the SUB was refused
    /// (the connection stays open).
    case subscriptionRefused(subject: String)
    /// `Permissions Violation for Publish to "S"` (possibly `with reply "R"`).
    case publishRefused(subject: String)
    case other(String)

    public init(text: String) {
        let subscription = "Permissions Violation for Subscription to \""
        let publish = "Permissions Violation for Publish to \""
        if let subject = Self.quoted(after: subscription, in: text) {
            self = .subscriptionRefused(subject: subject)
        } else if let subject = Self.quoted(after: publish, in: text) {
            self = .publishRefused(subject: subject)
        } else {
            self = .other(text)
        }
    }

    private static func quoted(after prefix: String, in text: String) -> String? {
        guard let start = text.firstRange(of: prefix)?.upperBound,
              let end = text[start...].firstIndex(of: "\"") else { return nil }
        return String(text[start..<end])
    }
}
