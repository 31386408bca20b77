// Package build owns the Screwdriver buildConfig as the worker reads it: the
// fields start and stop use, the annotations that steer the executor layer,
// and the checks that tell a usable start config from a broken one.
package build
