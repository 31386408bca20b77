// Package routing owns the translation of the configuration into routing
// rules: which config keys feed the weightage router, how the reference's
// relative weights become a Kata percentage, and the rules' version.
package routing
