package main

import (
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"
)

func newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens (admin)",
	}
	var role, name, output string
	create := &cobra.Command{
		Use:   "create --name NAME --role admin|operator|viewer",
		Short: "Issue a token; it is printed once, on standard output",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var res struct {
				Name, Role, Token string
			}
			if err := c.do(cmd.Context(), "POST", "/v1/tokens", map[string]string{"name": name, "role": role}, &res); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "token %q (%s) created; it is not shown again\n", res.Name, res.Role)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a name for the token (who or what uses it)")
	create.Flags().StringVar(&role, "role", "viewer", "admin, operator or viewer")
	_ = create.MarkFlagRequired("name")

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (names and roles; never the tokens)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			docs, err := c.listAll(cmd.Context(), "/v1/tokens")
			if err != nil {
				return err
			}
			switch output {
			case "json":
				return printJSON(cmd.OutOrStdout(), docs)
			case "yaml":
				return printYAMLDocs(cmd.OutOrStdout(), docs)
			}
			k, _ := lookupKind("tokens")
			return printTable(cmd.OutOrStdout(), k, docs)
		},
	}
	list.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")

	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Stop accepting a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var res json.RawMessage
			if err := c.do(cmd.Context(), "DELETE", "/v1/tokens/"+url.PathEscape(args[0]), nil, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %q revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
