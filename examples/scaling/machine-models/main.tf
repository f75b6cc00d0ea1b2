# Ranked machine models: every machine is bought as the first model; when the cloud has
# no capacity for it, the next one is tried, and so on (1 to 10 models). The maximum
# rounds up to whole machines of the first model: 1000 at 6 per machine is 167
# machines, 1002 processes.
#
#   terraform apply -var fleet_id=flt-…

terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "fleet_id" {
  description = "The fleet whose server processes the zone runs (a fleetform_fleet id)."
  type        = string
}

resource "fleetform_zone" "models" {
  fleet_id                 = var.fleet_id
  name                     = "us-east"
  initial_server_processes = 12

  buffer_rule {
    available_servers = 12
  }

  data_center {
    name                 = "aws-us-east-1"
    location             = "us-east-1"
    max_server_processes = 1000

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
    machine_model {
      instance_type         = "c5.2xlarge"
      processes_per_machine = 6
    }
    machine_model {
      instance_type         = "c6a.4xlarge"
      processes_per_machine = 12
    }
  }
}
