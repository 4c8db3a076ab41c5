/// NATS subject rules: tokens separated by `.`, none empty, no whitespace;
/// `*` matches one token and `>` one or more trailing tokens.
public enum Subject {
    /// A subject a subscription may use (wildcards allowed as whole tokens, `>` last).
    public static func isValidFilter(_ subject: String) -> Bool {
        validate(subject, allowWildcards: true)
    }

    /// A subject a message may be published to (no wildcards).
    public static func isValidLiteral(_ subject: String) -> Bool {
        validate(subject, allowWildcards: false)
    }

    private static func validate(_ subject: String, allowWildcards: Bool) -> Bool {
        if subject.isEmpty { return false }
        var sawFullWildcard = false
        for token in subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            if token.isEmpty || sawFullWildcard { return false }
            for byte in token where byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t")
                || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") {
                return false
            }
            // Wildcards are whole tokens; "a*" is an ordinary token.
            if token.count == 1, let only = token.first, only == UInt8(ascii: "*") || only == UInt8(ascii: ">") {
                guard allowWildcards else { return false }
                if only == UInt8(ascii: ">") { sawFullWildcard = true }
            }
        }
        return true
    }

    /// Whether literal `subject` matches `filter`.
    public static func matches(filter: String, subject: String) -> Bool {
        let filterTokens = filter.split(separator: ".", omittingEmptySubsequences: false)
        let subjectTokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in filterTokens.enumerated() {
            if token == ">" { return subjectTokens.count > index }
            guard index < subjectTokens.count else { return false }
            if token != "*" && token != subjectTokens[index] { return false }
        }
        return filterTokens.count == subjectTokens.count
    }
}
