// Command orchestra is the one Orchestra binary: the server (`orchestra up`)
// and the operator's client.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// usageError marks a mistake in the command line: exit status 2.
type usageError struct{ error }

// Main runs the command line args and returns the exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "orchestra",
		Short:         "Event-sourced orchestration of servers, services and resources",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newUpCommand(stderr), newApplyCommand(), newPlanCommand(), newGetCommand(), newDeleteCommand(), newTokenCommand(),
		newActionCommand(), newSyncCommand(), newScriptsCommand(), newUnitsCommand(), newLogsCommand(), newStatusCommand(), newHistoryCommand(), newReplayCommand(), newAgentCommand(stderr),
		newSiteCommand(), newRunCommand(), newPsCommand())
	root.AddCommand(newFleetCommands()...)

	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "orchestra:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}
