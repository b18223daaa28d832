package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/mail"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// KindSite is the kind of a site document.
const KindSite = "Site"

// Update strategies of a site.
const (
	StrategyStopAll = "stop-all"
	StrategyRolling = "rolling"
)

// Limits on a site.
const (
	maxServices = 200
	maxScale    = 100
	maxNotify   = 16
	maxEnv      = 64
	maxCommands = 32
)

// SiteSpec is a site as an operator writes it. Webhook secrets hold plain
// values here; they are sealed before they reach an event.
type SiteSpec struct {
	Name     string          `json:"name"`
	Update   *events.Update  `json:"update,omitempty"`
	Notify   []events.Notify `json:"notify,omitempty"`
	Services []ServiceSpec   `json:"services"`
}

// ServiceSpec is one service of a site as an operator writes it. A zero
// scale is one instance per server.
type ServiceSpec = events.SiteService

// builtinCommands are the commands every service may define as fields; a
// custom command may not take their names, nor those of site commands.
var builtinCommands = []string{"install", "configure", "start", "stop", "status", "run", "update", "restart"}

// normalize validates s and returns the site it describes, defaults filled
// in. Whether its servers exist is checked against the state.
func (s *SiteSpec) normalize() (events.Site, error) {
	if err := validateName("name", s.Name); err != nil {
		return events.Site{}, err
	}
	out := events.Site{Name: s.Name, Update: events.Update{Strategy: StrategyStopAll}}
	if s.Update != nil {
		out.Update = *s.Update
		if out.Update.Strategy == "" {
			out.Update.Strategy = StrategyStopAll
		}
	}
	if err := validateUpdate(&out.Update); err != nil {
		return events.Site{}, err
	}
	if len(s.Notify) > maxNotify {
		return events.Site{}, FieldErrorf(EINVALID, "notify", "has %d targets; the limit is %d", len(s.Notify), maxNotify)
	}
	for i, n := range s.Notify {
		prefix := fmt.Sprintf("notify[%d]", i)
		if err := ValidateNotify(prefix, n); err != nil {
			return events.Site{}, err
		}
		if j := slices.IndexFunc(s.Notify[:i], func(m events.Notify) bool { return m.Webhook == n.Webhook && m.Email == n.Email }); j >= 0 {
			return events.Site{}, FieldErrorf(EINVALID, prefix, "is the same target as notify[%d]", j)
		}
	}
	out.Notify = slices.Clone(s.Notify)
	switch {
	case len(s.Services) == 0:
		return events.Site{}, FieldErrorf(EINVALID, "services", "is empty: a site has at least one service")
	case len(s.Services) > maxServices:
		return events.Site{}, FieldErrorf(EINVALID, "services", "has %d services; the limit is %d", len(s.Services), maxServices)
	}
	seen := map[string]int{}
	for i, svc := range s.Services {
		prefix := fmt.Sprintf("services[%d]", i)
		n, err := normalizeService(prefix, svc)
		if err != nil {
			return events.Site{}, err
		}
		if j, dup := seen[n.Name]; dup {
			return events.Site{}, FieldErrorf(EINVALID, prefix+".name", "%q appears twice (also services[%d]); service names are unique in a site", n.Name, j)
		}
		seen[n.Name] = i
		out.Services = append(out.Services, n)
	}
	return out, nil
}

func validateUpdate(u *events.Update) error {
	if err := oneOf("update.strategy", u.Strategy, StrategyStopAll, StrategyRolling); err != nil {
		return err
	}
	switch {
	case u.Batch < 0:
		return FieldErrorf(EINVALID, "update.batch", "%d is negative", u.Batch)
	case u.MaxFailures < 0:
		return FieldErrorf(EINVALID, "update.max_failures", "%d is negative", u.MaxFailures)
	case u.Strategy == StrategyStopAll && (u.Batch != 0 || u.MaxFailures != 0):
		return FieldErrorf(EINVALID, "update.strategy", "is stop-all, which takes no batch or max_failures; they belong to the rolling strategy")
	case u.Strategy == StrategyRolling && u.Batch == 0:
		u.Batch = 1
	}
	return nil
}

// ValidateNotify checks one notification target: a webhook (http or https
// URL, optionally with a secret to sign with) or an email address.
func ValidateNotify(prefix string, n events.Notify) error {
	switch {
	case n.Webhook != "" && n.Email != "":
		return FieldErrorf(EINVALID, prefix, "has both webhook and email; give each target its own entry")
	case n.Webhook == "" && n.Email == "":
		return FieldErrorf(EINVALID, prefix, "names no target: set webhook or email")
	case n.Email != "":
		if n.Secret != "" {
			return FieldErrorf(EINVALID, prefix+".secret", "signs webhooks only; an email target takes none")
		}
		a, err := mail.ParseAddress(n.Email)
		if err != nil || a.Address != n.Email {
			return FieldErrorf(EINVALID, prefix+".email", "%q is not an email address (user@host)", n.Email)
		}
		return nil
	}
	u, err := url.Parse(n.Webhook)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return FieldErrorf(EINVALID, prefix+".webhook", "%q is not an http or https URL (credentials go in secret, not the URL)", n.Webhook)
	}
	if len(n.Secret) > maxSecret {
		return FieldErrorf(EINVALID, prefix+".secret", "is %d bytes long; the limit is %d", len(n.Secret), maxSecret)
	}
	return nil
}

func normalizeService(prefix string, s ServiceSpec) (ServiceSpec, error) {
	if err := validateIdent(prefix+".name", s.Name); err != nil {
		return s, err
	}
	if s.Rank < 0 {
		return s, FieldErrorf(EINVALID, prefix+".rank", "%d is negative; ranks start at 0", s.Rank)
	}
	switch {
	case len(s.Servers) > 0 && len(s.Selector) > 0:
		return s, FieldErrorf(EINVALID, prefix+".servers", "and selector are both set; name the servers or select them by label, not both")
	case len(s.Servers) == 0 && len(s.Selector) == 0:
		return s, FieldErrorf(EINVALID, prefix+".servers", "is empty and there is no selector: say where the service runs")
	}
	for i, name := range s.Servers {
		f := fmt.Sprintf("%s.servers[%d]", prefix, i)
		if err := validateName(f, name); err != nil {
			return s, err
		}
		if j := slices.Index(s.Servers[:i], name); j >= 0 {
			return s, FieldErrorf(EINVALID, f, "%q appears twice (also servers[%d])", name, j)
		}
	}
	if err := validateLabels(prefix+".selector", s.Selector); err != nil {
		return s, err
	}
	switch {
	case s.Scale < 0:
		return s, FieldErrorf(EINVALID, prefix+".scale", "%d is negative; a service runs at least one instance per server", s.Scale)
	case s.Scale > maxScale:
		return s, FieldErrorf(EINVALID, prefix+".scale", "%d is more than %d instances per server", s.Scale, maxScale)
	case s.Scale == 0:
		s.Scale = 1
	}
	if len(s.Env) > maxEnv {
		return s, FieldErrorf(EINVALID, prefix+".env", "has %d variables; the limit is %d", len(s.Env), maxEnv)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		if !envName(k) {
			return s, FieldErrorf(EINVALID, prefix+".env."+k, "%q is not a variable name (letters, digits and '_', not starting with a digit)", k)
		}
		if slices.Contains(reservedEnv, k) {
			return s, FieldErrorf(EINVALID, prefix+".env."+k, "is set by Orchestra for every instance")
		}
		if err := noControl(prefix+".env."+k, s.Env[k]); err != nil {
			return s, err
		}
	}
	if s.Timeout != "" {
		if d, err := time.ParseDuration(s.Timeout); err != nil || d <= 0 {
			return s, FieldErrorf(EINVALID, prefix+".timeout", "%q is not a positive duration such as 30s or 5m", s.Timeout)
		}
	}
	if err := validateSupervision(prefix, &s); err != nil {
		return s, err
	}
	if s.Start == "" && s.Run == "" {
		return s, FieldErrorf(EINVALID, prefix+".start", "is empty and there is no run command: say how the service starts")
	}
	for _, c := range []struct{ name, text string }{
		{"install", s.Install}, {"configure", s.Configure}, {"start", s.Start}, {"stop", s.Stop}, {"status", s.Status}, {"run", s.Run},
	} {
		if err := validateCommand(prefix+"."+c.name, c.text); err != nil {
			return s, err
		}
	}
	if len(s.Commands) > maxCommands {
		return s, FieldErrorf(EINVALID, prefix+".commands", "has %d commands; the limit is %d", len(s.Commands), maxCommands)
	}
	for _, name := range slices.Sorted(maps.Keys(s.Commands)) {
		f := prefix + ".commands." + name
		if err := validateIdent(f, name); err != nil {
			return s, err
		}
		if slices.Contains(builtinCommands, name) {
			return s, FieldErrorf(EINVALID, f, "is a built-in command; define it as the service's %s field or pick another name", name)
		}
		if s.Commands[name] == "" {
			return s, FieldErrorf(EINVALID, f, "is empty")
		}
		if err := validateCommand(f, s.Commands[name]); err != nil {
			return s, err
		}
	}
	if len(s.Env) == 0 {
		s.Env = nil
	}
	if len(s.Commands) == 0 {
		s.Commands = nil
	}
	return s, nil
}

// ValidateSiteName checks the name of a site.
func ValidateSiteName(name string) error { return validateName("site", name) }

// CheckService validates one service of a site on its own, as a site
// document's would be (whether its servers exist is not checked), and
// returns it with its defaults; errors name the service's own fields.
func CheckService(s ServiceSpec) (ServiceSpec, error) {
	out, err := normalizeService("service", s)
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Field = strings.TrimPrefix(c.Field, "service.")
		return out, &c
	}
	return out, err
}

// validateSupervision checks the fields of a supervised run command.
func validateSupervision(prefix string, s *ServiceSpec) error {
	if s.Dir != "" && !filepath.IsAbs(s.Dir) {
		return FieldErrorf(EINVALID, prefix+".dir", "%q is not an absolute path", s.Dir)
	}
	if err := noControl(prefix+".dir", s.Dir); err != nil {
		return err
	}
	if s.Port < 0 || s.Port > 65535 || s.Port > 0 && s.Port+max(s.Scale, 1)-1 > 65535 {
		return FieldErrorf(EINVALID, prefix+".port", "%d: instances get ports %d and up, which must stay within 1-65535", s.Port, s.Port)
	}
	if s.Restart != "" {
		if err := oneOf(prefix+".restart", s.Restart, events.RestartOnFailure, events.RestartAlways, events.RestartNever); err != nil {
			return err
		}
	}
	if s.MaxRestarts < 0 {
		return FieldErrorf(EINVALID, prefix+".max_restarts", "%d is negative", s.MaxRestarts)
	}
	if s.Grace != "" {
		if d, err := time.ParseDuration(s.Grace); err != nil || d <= 0 {
			return FieldErrorf(EINVALID, prefix+".grace", "%q is not a positive duration such as 10s", s.Grace)
		}
	}
	if s.Run == "" && (s.Dir != "" || s.Port != 0 || s.Restart != "" || s.MaxRestarts != 0 || s.Grace != "") {
		return FieldErrorf(EINVALID, prefix+".run", "is empty, but dir, port, restart, max_restarts or grace are set: they are about a supervised run command")
	}
	return nil
}

// reservedEnv are the variables every step's script sets.
var reservedEnv = []string{"ORCHESTRA_SITE", "ORCHESTRA_SERVICE", "ORCHESTRA_SERVER", "ORCHESTRA_COMMAND", "INSTANCE", "PORT"}

func envName(k string) bool {
	if k == "" || len(k) > 128 || k[0] >= '0' && k[0] <= '9' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func validateCommand(field, text string) error {
	if len(text) > maxFragment {
		return FieldErrorf(EINVALID, field, "is %d bytes long; the limit is %d", len(text), maxFragment)
	}
	return noControl(field, text)
}

// notifyContext is what a site's webhook secret is bound to.
func notifyContext(site, webhook string) string { return "site/" + site + "#notify:" + webhook }

// sealSite seals site's webhook secrets and lists what changed from old
// (nil for a new site). A Masked secret keeps the value old has for the
// same webhook.
func sealSite(sealer Sealer, site events.Site, old *events.Site) (events.Site, []string, error) {
	oldPlain := map[string]string{}
	oldSealed := map[string]string{}
	if old != nil {
		for _, n := range old.Notify {
			if n.Secret == "" {
				continue
			}
			plain, err := sealer.Open(n.Secret, notifyContext(old.Name, n.Webhook))
			if err != nil {
				return events.Site{}, nil, Errorf(EINTERNAL, "open the secret of webhook %s: %v", n.Webhook, err)
			}
			oldPlain[n.Webhook], oldSealed[n.Webhook] = plain, n.Secret
		}
	}
	out := site
	out.Notify = slices.Clone(site.Notify)
	secretsChanged := false
	for i, n := range out.Notify {
		if n.Secret == "" {
			secretsChanged = secretsChanged || oldPlain[n.Webhook] != ""
			continue
		}
		plain := n.Secret
		if plain == Masked {
			prev, ok := oldPlain[n.Webhook]
			if !ok {
				return events.Site{}, nil, FieldErrorf(EINVALID, fmt.Sprintf("notify[%d].secret", i), "is %q, which keeps the stored value, but webhook %s has none", Masked, n.Webhook)
			}
			plain = prev
		}
		if prev, ok := oldPlain[n.Webhook]; ok && prev == plain {
			out.Notify[i].Secret = oldSealed[n.Webhook]
			continue
		}
		secretsChanged = true
		sealed, err := sealer.Seal(plain, notifyContext(site.Name, n.Webhook))
		if err != nil {
			return events.Site{}, nil, Errorf(EINTERNAL, "seal the secret of webhook %s: %v", n.Webhook, err)
		}
		out.Notify[i].Secret = sealed
	}
	if old == nil {
		return out, []string{}, nil
	}
	changed := siteChanges(*old, out)
	if secretsChanged && !slices.Contains(changed, "notify") {
		changed = append(changed, "notify")
		slices.Sort(changed)
	}
	if len(changed) == 0 {
		return *old, nil, nil
	}
	return out, changed, nil
}

// siteChanges lists what differs between two sites: update, notify
// (secrets compared apart), services.<name>.
func siteChanges(a, b events.Site) []string {
	var out []string
	if a.Update != b.Update {
		out = append(out, "update")
	}
	targets := func(ns []events.Notify) []events.Notify {
		c := slices.Clone(ns)
		for i := range c {
			c[i].Secret = ""
		}
		return c
	}
	if !slices.Equal(targets(a.Notify), targets(b.Notify)) {
		out = append(out, "notify")
	}
	old := map[string]string{}
	for _, s := range a.Services {
		old[s.Name] = jsonText(s)
	}
	for _, s := range b.Services {
		if prev, ok := old[s.Name]; !ok || prev != jsonText(s) {
			out = append(out, "services."+s.Name)
		}
		delete(old, s.Name)
	}
	for name := range old {
		out = append(out, "services."+name)
	}
	// Order matters for ranks only through Rank, but a reordered list is
	// still a change of the document.
	if len(out) == 0 && jsonText(a.Services) != jsonText(b.Services) {
		out = append(out, "services")
	}
	slices.Sort(out)
	return out
}

func jsonText(v any) string {
	b, _ := json.Marshal(v) // plain data: never fails
	return string(b)
}

// ViewSite is a site as every API and CLI view shows it: webhook secrets
// masked.
func ViewSite(s events.Site) events.Site {
	v := s
	v.Notify = slices.Clone(s.Notify)
	for i := range v.Notify {
		if v.Notify[i].Secret != "" {
			v.Notify[i].Secret = Masked
		}
	}
	return v
}

// OpenNotify returns n with its secret opened, for the notifier.
func OpenNotify(sealer Sealer, site string, n events.Notify) (events.Notify, error) {
	if n.Secret == "" {
		return n, nil
	}
	plain, err := sealer.Open(n.Secret, notifyContext(site, n.Webhook))
	if err != nil {
		return n, fmt.Errorf("open the secret of webhook %s of site %s: %w", n.Webhook, site, err)
	}
	n.Secret = plain
	return n, nil
}

// Instance is one instance of a service of a site: the Index-th copy on
// Server.
type Instance struct {
	Service string `json:"service"`
	Server  string `json:"server"`
	Index   int    `json:"index"`
	Rank    int    `json:"rank"`
}

// Key identifies the instance within its site.
func (i Instance) Key() string { return i.Service + "/" + i.Server + "/" + strconv.Itoa(i.Index) }

// ServiceServers is where svc runs: its named servers, or the active
// servers whose labels hold every pair of its selector, by name.
func ServiceServers(svc events.SiteService, servers map[string]events.Server) []string {
	if len(svc.Servers) > 0 {
		return svc.Servers
	}
	var out []string
	for name, srv := range servers {
		if !srv.Active {
			continue
		}
		match := true
		for k, v := range svc.Selector {
			if srv.Labels[k] != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Instances lists every instance of site's services, by rank, service,
// server and index.
func Instances(site events.Site, servers map[string]events.Server) []Instance {
	var out []Instance
	for _, svc := range site.Services {
		for _, srv := range ServiceServers(svc, servers) {
			for i := range svc.Scale {
				out = append(out, Instance{Service: svc.Name, Server: srv, Index: i, Rank: svc.Rank})
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Instance) int {
		if a.Rank != b.Rank {
			return a.Rank - b.Rank
		}
		return strings.Compare(a.Key(), b.Key())
	})
	return out
}

// Site returns the site called name, if there is one.
func (s *Service) Site(name string) (events.Site, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.state.sites[name]
	return v.value, ok
}

// RecordInstance appends what a supervised instance did: an
// InstanceStarted or InstanceExited.
func (s *Service) RecordInstance(ctx context.Context, ev events.Payload) error {
	var id string
	switch e := ev.(type) {
	case *events.InstanceStarted:
		id = fmt.Sprintf("%s/%s/%s/%d", e.Site, e.Service, e.Server, e.Index)
	case *events.InstanceExited:
		id = fmt.Sprintf("%s/%s/%s/%d", e.Site, e.Service, e.Server, e.Index)
	default:
		return fmt.Errorf("record instance: %T is not an instance's event", ev)
	}
	agg := events.Aggregate{Type: events.AggInstance, ID: id}
	_, err := serialized(ctx, s, func() (struct{}, error) {
		s.mu.RLock()
		pos := s.state.position(agg)
		s.mu.RUnlock()
		_, _, err := s.commitOne(ctx, System, agg, pos, ev)
		return struct{}{}, err
	})
	return err
}

// RecordAbandoned appends that a notification was given up on.
func (s *Service) RecordAbandoned(ctx context.Context, ev events.NotificationAbandoned) error {
	agg := events.Aggregate{Type: events.AggNotification, ID: ev.ID}
	_, err := serialized(ctx, s, func() (struct{}, error) {
		s.mu.RLock()
		pos := s.state.position(agg)
		s.mu.RUnlock()
		_, _, err := s.commitOne(ctx, System, agg, pos, &ev)
		return struct{}{}, err
	})
	return err
}
