// Command api is the example fleet's middle service: it asks the store
// for a count and answers with it, on $PORT.
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
)

func main() {
	store := os.Getenv("STORE_URL")
	http.HandleFunc("/visit", func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(store + "/hit")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		n, _ := io.ReadAll(resp.Body)
		log.Printf("visit number %s", n)
		fmt.Fprintf(w, "api %s: visit %s", os.Getenv("INSTANCE"), n)
	})
	log.Printf("api %s listening on :%s, store at %s", os.Getenv("INSTANCE"), os.Getenv("PORT"), store)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
