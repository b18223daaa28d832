// Package projections holds Orchestra's read models: pure folds over the
// event log plus the adapters that store them with their checkpoint. The
// planner, script logs, units, sites and servers projections live here.
package projections
