// Package fleetdir reads a local fleet: a folder whose sub-folders each
// hold a service.yml, and an orchestra.yml with the environment and
// defaults they share. It turns them into the site Orchestra runs on the
// local server, or says, naming the file and the key, why it cannot.
package fleetdir

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/orchestra-fleet/orchestra/services"
)

// Files of a fleet folder.
const (
	ConfigFile  = "orchestra.yml"
	ServiceFile = "service.yml"
	// Server is the local server a fleet's services run on.
	Server = "local"
)

// Config is orchestra.yml: the site's name (default: the folder's), the
// environment of every service, environment per service, and defaults.
type Config struct {
	Site     string                       `yaml:"site"`
	Env      map[string]string            `yaml:"env"`
	Services map[string]map[string]string `yaml:"services"` // service → its extra environment
	Defaults Defaults                     `yaml:"defaults"`
}

// Defaults apply to every service that does not say.
type Defaults struct {
	Scale       int    `yaml:"scale"`
	Restart     string `yaml:"restart"`
	MaxRestarts int    `yaml:"max_restarts"`
	Grace       string `yaml:"grace"`
}

// Service is one service.yml.
type Service struct {
	Name        string            `yaml:"name"`
	Build       string            `yaml:"build"`
	Run         string            `yaml:"run"`
	Test        string            `yaml:"test"`
	Env         map[string]string `yaml:"env"`
	Scale       int               `yaml:"scale"`
	Rank        *int              `yaml:"rank"`
	DependsOn   []string          `yaml:"depends_on"`
	Port        int               `yaml:"port"`
	Watch       []string          `yaml:"watch"`
	Restart     string            `yaml:"restart"`
	MaxRestarts int               `yaml:"max_restarts"`
	Grace       string            `yaml:"grace"`
	Install     string            `yaml:"install"`
	Configure   string            `yaml:"configure"`
	Start       string            `yaml:"start"`
	Stop        string            `yaml:"stop"`
	Status      string            `yaml:"status"`
	Docker      *Docker           `yaml:"docker"`

	// Dir is the service's folder, File its service.yml (relative to
	// the fleet's folder, for messages).
	Dir  string `yaml:"-"`
	File string `yaml:"-"`
}

// Docker is the shorthand for a vendor service run as a container: it
// renders the start, stop and status commands.
type Docker struct {
	Image string            `yaml:"image"`
	Ports []string          `yaml:"ports"`
	Env   map[string]string `yaml:"env"`
	Args  []string          `yaml:"args"`
}

// Fleet is a folder's services, ranked.
type Fleet struct {
	Dir      string
	Config   Config
	Services []Service // by rank, then name
}

// Error is a problem with one key of one file.
type Error struct {
	File, Key, Reason string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return e.File + ": " + e.Reason
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Key, e.Reason)
}

// Load reads the fleet in dir.
func Load(dir string) (*Fleet, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	f := &Fleet{Dir: dir}
	if err := decode(filepath.Join(dir, ConfigFile), ConfigFile, &f.Config); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if f.Config.Site == "" {
		f.Config.Site = siteName(filepath.Base(dir))
	}
	if err := f.Config.check(); err != nil {
		return nil, err
	}
	if err := services.ValidateSiteName(f.Config.Site); err != nil {
		return nil, &Error{ConfigFile, "site", err.Error()}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*", ServiceFile))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, &Error{dir, "", "no */" + ServiceFile + " here: every service is a folder with a " + ServiceFile}
	}
	for _, file := range files {
		rel, _ := filepath.Rel(dir, file)
		var s Service
		if err := decode(file, rel, &s); err != nil {
			return nil, err
		}
		s.Dir, s.File = filepath.Dir(file), rel
		if s.Name == "" {
			s.Name = filepath.Base(s.Dir)
		}
		if err := f.check(&s); err != nil {
			return nil, err
		}
		f.Services = append(f.Services, s)
	}
	for name := range f.Config.Services {
		if !slices.ContainsFunc(f.Services, func(s Service) bool { return s.Name == name }) {
			return nil, &Error{ConfigFile, "services." + name, "names no service of the folder"}
		}
	}
	if err := f.rank(); err != nil {
		return nil, err
	}
	if err := f.ports(); err != nil {
		return nil, err
	}
	return f, nil
}

// siteName makes a site name of a folder's name.
func siteName(base string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(base, "-")
}

var yamlLine = regexp.MustCompile(`line (\d+): field (\S+) not found in type \S+`)

// decode reads one YAML file strictly: an unknown key is an error naming
// it and its line.
func decode(path, rel string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, errEOF(err)) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			return &Error{rel, m[2], fmt.Sprintf("line %s: not a known key", m[1])}
		}
		return &Error{rel, "", msg}
	}
	return nil
}

// errEOF lets an empty file through: it says nothing.
func errEOF(err error) error {
	if err != nil && err.Error() == "EOF" {
		return err
	}
	return errors.New("not EOF")
}

// check validates orchestra.yml on its own, so that its mistakes are
// reported against it.
func (c Config) check() error {
	probe := services.ServiceSpec{Name: "probe", Servers: []string{Server}, Start: "true", Env: c.Env}
	if _, err := services.CheckService(probe); err != nil {
		return configError("", err)
	}
	for name, env := range c.Services {
		probe.Env = env
		if _, err := services.CheckService(probe); err != nil {
			return configError("services."+name, err)
		}
	}
	if c.Defaults.Scale < 0 {
		return &Error{ConfigFile, "defaults.scale", fmt.Sprintf("%d is negative", c.Defaults.Scale)}
	}
	d := services.ServiceSpec{Name: "probe", Servers: []string{Server}, Run: "true", Restart: c.Defaults.Restart,
		MaxRestarts: c.Defaults.MaxRestarts, Grace: c.Defaults.Grace}
	if _, err := services.CheckService(d); err != nil {
		return configError("defaults", err)
	}
	return nil
}

// configError reports err, about a probe service, against orchestra.yml.
func configError(prefix string, err error) error {
	var e *services.Error
	if errors.As(err, &e) {
		key := e.Field
		if prefix != "" {
			key = prefix + "." + strings.TrimPrefix(key, "env.")
		}
		return &Error{ConfigFile, key, e.Message}
	}
	return &Error{ConfigFile, prefix, err.Error()}
}

// check validates one service and fills in its defaults.
func (f *Fleet) check(s *Service) error {
	fail := func(key, format string, args ...any) error { return &Error{s.File, key, fmt.Sprintf(format, args...)} }
	if s.Docker != nil {
		if s.Run != "" || s.Start != "" || s.Stop != "" || s.Status != "" {
			return fail("docker", "renders start, stop and status; it cannot go with run, start, stop or status")
		}
		if s.Docker.Image == "" {
			return fail("docker.image", "is missing")
		}
		s.Start, s.Stop, s.Status = s.Docker.commands(f.Config.Site, s.Name)
	}
	if s.Run != "" && (s.Start != "" || s.Stop != "" || s.Status != "") {
		return fail("run", "is a supervised command, which Orchestra starts, stops and asks after itself; it cannot go with start, stop or status")
	}
	if s.Docker != nil && s.Port != 0 {
		return fail("port", "is for a run command; publish a container's ports with docker.ports")
	}
	if s.Run == "" && s.Start == "" {
		return fail("run", "is missing: say how the service runs (run, or start with stop and status, or docker)")
	}
	if s.Rank != nil && len(s.DependsOn) > 0 {
		return fail("depends_on", "and rank are both set; give one of them")
	}
	if s.Scale == 0 {
		s.Scale = max(f.Config.Defaults.Scale, 1)
	}
	if s.Restart == "" {
		s.Restart = f.Config.Defaults.Restart
	}
	if s.MaxRestarts == 0 {
		s.MaxRestarts = f.Config.Defaults.MaxRestarts
	}
	if s.Grace == "" {
		s.Grace = f.Config.Defaults.Grace
	}
	for _, g := range s.Watch {
		if _, err := filepath.Match(g, "x"); err != nil || strings.HasPrefix(g, "/") {
			return fail("watch", "%q is not a glob relative to the service's folder", g)
		}
	}
	// The rest is what a site's service must be: check it the same way,
	// and report it against this file.
	if _, err := services.CheckService(f.serviceSpec(*s, 0)); err != nil {
		var e *services.Error
		if errors.As(err, &e) && e.Field != "" {
			return fail(e.Field, "%s", e.Message)
		}
		return fail("", "%v", err)
	}
	return nil
}

// rank turns depends_on into ranks: a service ranks one above the
// highest of those it depends on. A cycle is an error naming it.
func (f *Fleet) rank() error {
	byName := map[string]*Service{}
	for i := range f.Services {
		s := &f.Services[i]
		if prev, dup := byName[s.Name]; dup {
			return &Error{s.File, "name", fmt.Sprintf("%q is also the name of %s", s.Name, prev.File)}
		}
		byName[s.Name] = s
	}
	ranks := map[string]int{}
	var visit func(s *Service, path []string) (int, error)
	visit = func(s *Service, path []string) (int, error) {
		if r, ok := ranks[s.Name]; ok {
			return r, nil
		}
		if i := slices.Index(path, s.Name); i >= 0 {
			cycle := append(slices.Clone(path[i:]), s.Name)
			return 0, &Error{s.File, "depends_on", "forms a cycle: " + strings.Join(cycle, " → ")}
		}
		if s.Rank != nil {
			ranks[s.Name] = *s.Rank
			return *s.Rank, nil
		}
		r := 1
		for _, dep := range s.DependsOn {
			d, ok := byName[dep]
			if !ok {
				return 0, &Error{s.File, "depends_on", fmt.Sprintf("%q is no service of the folder", dep)}
			}
			dr, err := visit(d, append(path, s.Name))
			if err != nil {
				return 0, err
			}
			r = max(r, dr+1)
		}
		ranks[s.Name] = r
		return r, nil
	}
	for i := range f.Services {
		if _, err := visit(&f.Services[i], nil); err != nil {
			return err
		}
	}
	for i := range f.Services {
		r := ranks[f.Services[i].Name]
		f.Services[i].Rank = &r
	}
	slices.SortFunc(f.Services, func(a, b Service) int {
		if *a.Rank != *b.Rank {
			return *a.Rank - *b.Rank
		}
		return strings.Compare(a.Name, b.Name)
	})
	return nil
}

// ports refuses two services whose instances' ports overlap.
func (f *Fleet) ports() error { return f.CheckPorts(nil) }

// CheckPorts refuses two services whose instances' ports overlap with
// the scales given (a service not in scale has its own).
func (f *Fleet) CheckPorts(scale map[string]int) error {
	n := func(s Service) int {
		if v := scale[s.Name]; v > 0 {
			return v
		}
		return s.Scale
	}
	for i, a := range f.Services {
		for _, b := range f.Services[:i] {
			if a.Port == 0 || b.Port == 0 {
				continue
			}
			if a.Port < b.Port+n(b) && b.Port < a.Port+n(a) {
				return &Error{a.File, "port", fmt.Sprintf("%d-%d collides with %s's %d-%d (port + instance, for scale instances)",
					a.Port, a.Port+n(a)-1, b.File, b.Port, b.Port+n(b)-1)}
			}
		}
	}
	return nil
}

// Site is the site document of the fleet; scale overrides services'
// scales.
func (f *Fleet) Site(scale map[string]int) services.SiteSpec {
	site := services.SiteSpec{Name: f.Config.Site}
	for _, s := range f.Services {
		site.Services = append(site.Services, f.serviceSpec(s, scale[s.Name]))
	}
	return site
}

func (f *Fleet) serviceSpec(s Service, scale int) services.ServiceSpec {
	env := maps.Clone(f.Config.Env)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, f.Config.Services[s.Name])
	maps.Copy(env, s.Env)
	rank := 0
	if s.Rank != nil {
		rank = *s.Rank
	}
	if scale == 0 {
		scale = s.Scale
	}
	spec := services.ServiceSpec{Name: s.Name, Rank: rank, Servers: []string{Server}, Scale: scale, Env: env,
		Install: s.Install, Configure: s.Configure, Start: s.Start, Stop: s.Stop, Status: s.Status, Run: s.Run}
	if s.Run != "" {
		spec.Dir, spec.Port, spec.Restart, spec.MaxRestarts, spec.Grace = s.Dir, s.Port, s.Restart, s.MaxRestarts, s.Grace
	}
	return spec
}

// commands renders a container's start, stop and status commands, every
// value shell-quoted.
func (d *Docker) commands(site, service string) (start, stop, status string) {
	name := fmt.Sprintf("orchestra-%s-%s-", site, service)
	q := services.ShellQuote
	var b strings.Builder
	fmt.Fprintf(&b, "docker run -d --name %s\"$INSTANCE\"", q(name))
	for _, p := range d.Ports {
		fmt.Fprintf(&b, " -p %s", q(p))
	}
	for _, k := range slices.Sorted(maps.Keys(d.Env)) {
		fmt.Fprintf(&b, " -e %s", q(k+"="+d.Env[k]))
	}
	fmt.Fprintf(&b, " %s", q(d.Image))
	for _, a := range d.Args {
		fmt.Fprintf(&b, " %s", q(a))
	}
	start = b.String()
	stop = fmt.Sprintf("docker rm -f %s\"$INSTANCE\" >/dev/null", q(name))
	status = fmt.Sprintf("test \"$(docker inspect -f '{{.State.Running}}' %s\"$INSTANCE\" 2>/dev/null)\" = true || exit 3", q(name))
	return start, stop, status
}
