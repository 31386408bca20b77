// Package logging owns the construction of the daemon's zap logger: JSON
// lines for production, a console encoder for humans, and the level.
package logging
