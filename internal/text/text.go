// Package text bounds and quotes values taken from requests for messages.
package text

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Truncate returns s cut to at most n bytes on a rune boundary, with "…"
// appended when it was cut.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:cut(s, n)] + "…"
}

// Quote quotes s for a message: at most n bytes of it, on a rune boundary,
// with non-ASCII escaped so that look-alike characters show, and the full
// length when it was cut.
func Quote(s string, n int) string {
	if len(s) <= n {
		return strconv.QuoteToASCII(s)
	}
	return strconv.QuoteToASCII(s[:cut(s, n)]) + fmt.Sprintf("…(%d bytes)", len(s))
}

// cut returns the largest index <= n (n < len(s)) at which a rune starts.
func cut(s string, n int) int {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return n
}
