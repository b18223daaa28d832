package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/orchestra-fleet/orchestra"

// TestLayers keeps the package layout of DESIGN.md §4 honest: each layer
// imports only the layers (and third-party modules) it is allowed to.
func TestLayers(t *testing.T) {
	rules := []struct {
		pkg string
		// allowed internal packages (prefixes) and whether any
		// third-party module besides uuid may be imported
		internal   []string
		thirdParty bool
	}{
		{"events", nil, false},
		{"services", []string{"events"}, false},
		{"projections", []string{"events", "services"}, false},
		{"executor", []string{"events"}, true},
		{"gateway", []string{"services", "projections", "events"}, true},
	}
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../../"+r.pkg+"/...").Output()
			if err != nil {
				t.Fatalf("go list: %v", err)
			}
			for _, dep := range strings.Fields(string(out)) {
				rel, internal := strings.CutPrefix(dep, module+"/")
				switch {
				case internal && (rel == r.pkg || strings.HasPrefix(rel, r.pkg+"/")):
				case internal:
					if !allowed(rel, r.internal) {
						t.Errorf("%s imports %s", r.pkg, rel)
					}
				case dep == "github.com/google/uuid":
				case !r.thirdParty:
					t.Errorf("%s imports third-party %s", r.pkg, dep)
				}
			}
		})
	}
}

func allowed(rel string, prefixes []string) bool {
	for _, p := range prefixes {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return false
}
