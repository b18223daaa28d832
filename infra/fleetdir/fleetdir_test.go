package fleetdir_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/infra/fleetdir"
)

// folder writes files (path → content) under a new folder.
func folder(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "my fleet")
	for path, content := range files {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadRanksAndMerges(t *testing.T) {
	dir := folder(t, map[string]string{
		"orchestra.yml":     "env: {LOG_LEVEL: info, REGION: eu}\nservices: {api: {REGION: us}}\ndefaults: {grace: 3s}\n",
		"api/service.yml":   "build: go build -o bin/api .\nrun: ./bin/api --port $PORT\ntest: go test ./...\nenv: {LOG_LEVEL: debug}\nscale: 2\ndepends_on: [db, cache]\nport: 8100\nwatch: ['*.go']\n",
		"web/service.yml":   "run: ./web\ndepends_on: [api]\nport: 8200\n",
		"db/service.yml":    "start: echo up\nstop: echo down\nstatus: 'true'\n",
		"cache/service.yml": "name: cache\nrun: sleep 100\nrank: 1\n",
	})
	f, err := fleetdir.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, s := range f.Services {
		order = append(order, s.Name+":"+string(rune('0'+*s.Rank)))
	}
	if got := strings.Join(order, " "); got != "cache:1 db:1 api:2 web:3" {
		t.Errorf("ranks: %s", got)
	}
	site := f.Site(map[string]int{"web": 3})
	if site.Name != "my-fleet" {
		t.Errorf("site %q, want the folder's name made a name", site.Name)
	}
	api := site.Services[2]
	if api.Env["LOG_LEVEL"] != "debug" || api.Env["REGION"] != "us" || api.Scale != 2 || api.Port != 8100 || api.Grace != "3s" || api.Dir != filepath.Join(dir, "api") {
		t.Errorf("api: %+v", api)
	}
	if site.Services[3].Scale != 3 {
		t.Errorf("web's scale override: %d", site.Services[3].Scale)
	}
}

func TestLoadRefusesNamingFileAndKey(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"unknown key", map[string]string{"api/service.yml": "run: x\nbogus: 1\n"}, `api/service.yml: bogus: line 2: not a known key`},
		{"missing run", map[string]string{"api/service.yml": "build: go build\n"}, `api/service.yml: run: is missing`},
		{"cycle", map[string]string{
			"a/service.yml": "run: x\ndepends_on: [b]\n", "b/service.yml": "run: x\ndepends_on: [c]\n", "c/service.yml": "run: x\ndepends_on: [a]\n",
		}, "depends_on: forms a cycle: a → b → c → a"},
		{"unknown dependency", map[string]string{"a/service.yml": "run: x\ndepends_on: [db]\n"}, `a/service.yml: depends_on: "db" is no service`},
		{"port collision", map[string]string{
			"a/service.yml": "run: x\nport: 8100\nscale: 3\n", "b/service.yml": "run: x\nport: 8102\n",
		}, "b/service.yml: port: 8102-8102 collides with a/service.yml's 8100-8102"},
		{"negative scale", map[string]string{"a/service.yml": "run: x\nscale: -1\n"}, "a/service.yml: scale: -1 is negative"},
		{"rank and depends_on", map[string]string{"a/service.yml": "run: x\nrank: 1\ndepends_on: [b]\n", "b/service.yml": "run: x\n"}, "a/service.yml: depends_on: and rank are both set"},
		{"bad config key", map[string]string{"orchestra.yml": "enviroment: {}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: enviroment: line 1: not a known key"},
		{"config names no service", map[string]string{"orchestra.yml": "services: {ghost: {A: b}}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: services.ghost: names no service"},
		{"no services", map[string]string{"orchestra.yml": "env: {}\n"}, "no */service.yml here"},
		{"docker with run", map[string]string{"a/service.yml": "run: x\ndocker: {image: redis}\n"}, "a/service.yml: docker: renders start"},
		{"docker with port", map[string]string{"a/service.yml": "docker: {image: redis}\nport: 6379\n"}, "a/service.yml: port: is for a run command"},
		{"run with start", map[string]string{"a/service.yml": "run: x\nstart: y\n"}, "a/service.yml: run: is a supervised command"},
		{"bad global env", map[string]string{"orchestra.yml": "env: {1BAD: x}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: env.1BAD:"},
		{"bad service env", map[string]string{"orchestra.yml": "services: {a: {PORT: '1'}}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: services.a.PORT: is set by Orchestra"},
		{"bad default", map[string]string{"orchestra.yml": "defaults: {restart: sometimes}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: defaults.restart:"},
		{"negative default scale", map[string]string{"orchestra.yml": "defaults: {scale: -3}\n", "a/service.yml": "run: x\n"}, "orchestra.yml: defaults.scale: -3 is negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := fleetdir.Load(folder(t, c.files))
			var fe *fleetdir.Error
			if err == nil || !errors.As(err, &fe) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v\nwant an error holding %q", err, c.want)
			}
		})
	}
}

// TestDockerShorthand: a docker service gets start, stop and status
// commands with every value quoted.
func TestDockerShorthand(t *testing.T) {
	dir := folder(t, map[string]string{"db/service.yml": "docker: {image: 'postgres:16', ports: ['5432:5432'], env: {POSTGRES_PASSWORD: \"it's $(id)\"}}\n"})
	f, err := fleetdir.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := f.Services[0]
	if !strings.HasPrefix(s.Start, "docker run -d --name 'orchestra-my-fleet-db-'\"$INSTANCE\" -p '5432:5432' -e 'POSTGRES_PASSWORD=it'\\''s $(id)' 'postgres:16'") {
		t.Errorf("start: %s", s.Start)
	}
	if !strings.Contains(s.Stop, "docker rm -f") || !strings.Contains(s.Status, "exit 3") {
		t.Errorf("stop %q, status %q", s.Stop, s.Status)
	}
	// The rendered command parses as shell and keeps the value whole.
	if out, err := exec.Command("/bin/sh", "-n", "-c", s.Start).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v %s", err, out)
	}
}

// TestCheckPortsWithScales: a scale set later is checked too.
func TestCheckPortsWithScales(t *testing.T) {
	f, err := fleetdir.Load(folder(t, map[string]string{"api/service.yml": "run: x\nport: 8100\n", "web/service.yml": "run: x\nport: 8101\n"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.CheckPorts(map[string]int{"api": 2}); err == nil || !strings.Contains(err.Error(), "api/service.yml: port: 8100-8101 collides with web/service.yml's 8101-8101") &&
		!strings.Contains(err.Error(), "web/service.yml: port: 8101-8101 collides with api/service.yml's 8100-8101") {
		t.Errorf("scale api 2: %v", err)
	}
	if err := f.CheckPorts(map[string]int{"web": 5}); err != nil {
		t.Errorf("scale web 5: %v", err)
	}
}
