package events

// Catalog lists every event type Orchestra writes, as prototypes for
// NewRegistry. Adding an event type means adding its payload struct beside
// its aggregate's others and listing it here; a test checks the list builds.
func Catalog() []Payload {
	return []Payload{
		&ServerSaved{}, &ServerDeleted{},
		&BackendSaved{}, &BackendDeleted{},
		&RouteSaved{}, &RouteDeleted{},
		&ResourceSaved{}, &ResourceDeleted{},
		&TokenCreated{}, &TokenRevoked{},
		&ResourceActionRequested{}, &ServerSyncRequested{}, &ScriptRetryRequested{},
		&SiteSaved{}, &SiteDeleted{},
		&RunRequested{}, &RunPhaseStarted{}, &RunPhaseFinished{}, &RunCancelRequested{}, &RunFinished{},
		&NotificationAbandoned{}, &InstanceStarted{}, &InstanceExited{},
	}
}

// Aggregate types of the model.
const (
	AggServer   = "server"
	AggBackend  = "backend"
	AggRoute    = "route"
	AggResource = "resource"
	AggToken    = "token"
	AggScript   = "script" // a script's retries
	AggSite     = "site"
	// AggSiteRun holds the runs of one site (its id is the site's name),
	// so that one run at a time is a compare-and-set.
	AggSiteRun      = "siterun"
	AggNotification = "notification"
	// AggInstance holds a supervised instance's lifecycle; its id is
	// <site>/<service>/<server>/<index>.
	AggInstance = "instance"
)
